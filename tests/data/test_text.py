"""Byte corpora: deterministic split, document separators, reproducible batches."""

from __future__ import annotations

import pytest
import torch

from batchcraft.data.text import ByteBatches, ByteTokenizer, load_corpus, split_of


def test_split_is_deterministic_and_about_five_percent():
    names = [f"lib/mod{i}.py" for i in range(4000)]
    vals = [split_of(n) for n in names]
    assert vals == [split_of(n) for n in names]
    frac = vals.count("val") / len(vals)
    assert 0.035 < frac < 0.065


def test_load_corpus_from_folder(tmp_path):
    for i in range(60):
        (tmp_path / f"m{i:02d}.py").write_text(f"x = {i}\n")
    tr = load_corpus([tmp_path], split="train")
    va = load_corpus([tmp_path], split="val")
    assert set(tr.files).isdisjoint(va.files) and len(tr.files) + len(va.files) == 60
    assert tr.files == sorted(tr.files)
    assert int((tr.data == 0).sum()) == len(tr.files)  # one separator per document
    assert tr.doc_starts.numel() == len(tr.files)
    capped = load_corpus([tmp_path], split="train", max_bytes=20)
    assert len(capped) <= 20
    with pytest.raises(ValueError, match="split"):
        load_corpus([tmp_path], split="test")
    with pytest.raises(ValueError, match="neither"):
        load_corpus([tmp_path / "missing"])


def test_batches_reproducible_by_step(tmp_path):
    (tmp_path / "a.py").write_text("abcdefghij" * 50)
    c = load_corpus([tmp_path], split=split_of("a.py"))  # hashed relative to the folder
    b = ByteBatches(c, batch_size=3, context=16, seed=5)
    x = b.get(7)
    assert x.shape == (3, 17) and x.dtype == torch.long
    assert torch.equal(x, ByteBatches(c, batch_size=3, context=16, seed=5).get(7))
    assert not torch.equal(x, b.get(8))
    seq = list(b.sequential(2))
    assert len(seq) == 2
    assert torch.equal(seq[0][0, 16], seq[0][1, 0])  # windows are contiguous, overlapping by 1
    with pytest.raises(ValueError, match="context"):
        ByteBatches(c, batch_size=1, context=10_000)


def test_tokenizer_round_trip():
    tok = ByteTokenizer()
    s = "def f(x):\n    return 'é'\n"
    assert tok.decode(tok.encode(s)) == s and tok.vocab_size == 256


def test_stdlib_corpus_is_real_python():
    c = load_corpus(split="val", max_bytes=50_000)
    text = ByteTokenizer().decode(c.data[:5000])
    assert "def " in text or "import " in text
