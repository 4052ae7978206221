"""Synthetic data mixture: sizes, answer-only labels, disjoint eval prompts, JSONL loader."""

from __future__ import annotations

import json

import pytest
import torch

from batchcraft.data.mixture import CharTokenizer, collate, load_jsonl_mixture, make_mixture


def test_mixture_sizes_labels_and_disjoint_eval():
    mix = make_mixture((300, 100, 30, 3), seed=0, eval_size=20)
    assert mix.counts.tolist() == [300, 100, 30, 3]
    tr = mix.train
    tok = mix.tokenizer
    train_prompts = set()
    for i in range(tr["source"].numel()):
        ids, lab = tr["input_ids"][i], tr["labels"][i]
        n_lab = int((lab != -100).sum())
        assert n_lab >= 2 and int(lab[lab != -100][-1]) == tok.eos_id
        first = int((lab != -100).nonzero()[0])
        train_prompts.add(tok.decode(ids[:first].tolist()))
    for q, ev in mix.eval.items():
        assert (ev["source"] == q).all()
        for i in range(ev["source"].numel()):
            first = int((ev["labels"][i] != -100).nonzero()[0])
            assert tok.decode(ev["input_ids"][i, :first].tolist()) not in train_prompts
    assert torch.equal(make_mixture((300, 100, 30, 3), seed=0).train["input_ids"], tr["input_ids"])


def test_collate_answer_only_labels():
    tok = CharTokenizer()
    b = collate([("add 1 2=", "3", 0), ("rev ab:", "ba", 1)], tok)
    assert b["input_ids"].shape == b["labels"].shape == (2, 11)
    lab0 = b["labels"][0][b["labels"][0] != -100].tolist()
    assert lab0 == [*tok.encode("3"), tok.eos_id]
    assert b["attention_mask"][0].sum() == 1 + 8 + 2
    with pytest.raises(ValueError, match="not in the tokenizer alphabet"):
        tok.encode("A!")


def test_pool_fraction_of_small_sources():
    mix = make_mixture((2000, 500, 40, 20), seed=1, eval_size=1)
    pools = [mix.sample_pool(64, generator=torch.Generator().manual_seed(s)) for s in range(40)]
    frac = torch.cat([p["source"] for p in pools]).ge(2).float().mean()
    assert abs(float(frac) - 60 / 2560) < 0.015
    with pytest.raises(ValueError, match="size must be"):
        mix.sample_pool(0, generator=torch.Generator())


def test_jsonl_loader(tmp_path):
    path = tmp_path / "d.jsonl"
    recs = [
        {"prompt": f"Q{i}?", "answer": str(i), "source": "math" if i % 3 else "Code"}
        for i in range(30)
    ]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    mix = load_jsonl_mixture(path, eval_fraction=0.2)
    assert mix.names == ["Code", "math"]
    assert int(mix.counts.sum()) + sum(int(e["source"].numel()) for e in mix.eval.values()) == 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match="missing field"):
        load_jsonl_mixture(bad)
