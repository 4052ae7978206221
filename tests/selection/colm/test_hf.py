"""Hugging Face integration: CoLMTrainer + PEFT LoRA on a tiny random Llama (no download)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")


class _Payload:
    """Unpickling this object calls ``open(path, "w")``: it would create ``path``."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_colm_trainer_two_steps_changes_only_lora(tmp_path):
    from transformers import TrainingArguments

    from batchcraft.data.mixture import make_mixture
    from batchcraft.selection.colm import CoLMSelector, ZOProbe
    from batchcraft.selection.colm.hf import (
        CoLMTrainer,
        find_module,
        find_param,
        load_selector_state,
        lora_wrap,
        tiny_llama,
    )

    mix = make_mixture((40, 20, 6, 3), seed=0, eval_size=2)
    rows = [{k: v[i] for k, v in mix.train.items()} for i in range(len(mix.train["source"]))]

    def collator(examples):
        return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}

    rng = torch.get_rng_state()
    model = lora_wrap(tiny_llama(mix.tokenizer.vocab_size, hidden_size=16, heads=2), r=4)
    assert torch.equal(torch.get_rng_state(), rng)  # building the model kept the global RNG
    name = find_param(model, "layers.1.self_attn.v_proj.lora_B")
    probe = ZOProbe(model, name, seed=0)
    # prefix/suffix fast path on a PEFT model: only module names are needed
    pool = mix.sample_pool(6, generator=torch.Generator().manual_seed(0))
    fast = ZOProbe(
        model,
        name,
        seed=0,
        split_at=find_module(model, "layers.1"),
        tail=(find_module(model, "model.norm"), find_module(model, "lm_head")),
    )
    torch.testing.assert_close(fast.features(pool), probe.features(pool), rtol=1e-4, atol=1e-6)
    probe = ZOProbe(model, name, seed=0)
    selector = CoLMSelector(probe, 8, source_counts=mix.counts, h=32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = CoLMTrainer(
        selector=selector, model=model, args=args, train_dataset=rows, data_collator=collator
    )
    trainer.train()
    assert probe.calls == 2 and selector.steps == 2
    sel = trainer.last_selection
    assert sel.idx.numel() == 8
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "no parameter changed"
    assert all("lora_" in n for n in changed), sorted(changed)
    assert any("lora_B" in n for n in changed)
    # the checkpoint carries the selector state; a fresh selector resumes from it
    fresh = CoLMSelector(ZOProbe(model, name, seed=5), 8, source_counts=mix.counts, h=32)
    load_selector_state(fresh, tmp_path / "checkpoint-2")
    assert fresh.steps == 2 and fresh.probe.seed == 0
    assert torch.equal(fresh.normalizer.m, selector.normalizer.m)
    with pytest.raises(ValueError, match="not a CoLMTrainer checkpoint"):
        load_selector_state(fresh, tmp_path)
    # a crafted selector state is refused without running its payload
    assert (tmp_path / "checkpoint-2" / "colm_selector.safetensors").exists()
    evil, canary = tmp_path / "evil", tmp_path / "canary"
    evil.mkdir()
    torch.save({"steps": 9, "x": _Payload(canary)}, evil / "colm_selector.safetensors")
    with pytest.raises(ValueError, match="not a readable batchcraft checkpoint"):
        load_selector_state(fresh, evil)
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"steps": 9, "x": _Payload(canary)}, old / "colm_selector.pt")
    with pytest.raises(ValueError, match=r"pickled selector state .* not loaded"):
        load_selector_state(fresh, old)
    assert not canary.exists() and fresh.steps == 2
