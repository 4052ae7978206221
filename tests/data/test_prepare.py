"""prepare_corpus: bytes parity with load_corpus, determinism, splits, no-op, resume, errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from batchcraft.data import corpus_files
from batchcraft.data import prepare as prep
from batchcraft.data.manifest import ShardError, read_manifest
from batchcraft.data.prepare import check_prepare_args, collect_text_files, prepare_corpus
from batchcraft.data.shards import TokenShards
from batchcraft.data.text import load_corpus, split_of
from batchcraft.data.tokenizers import load_tokenizer

VAL = 0.25


def _tokens(out: Path, split: str) -> np.ndarray:
    m = read_manifest(out)
    parts = [np.fromfile(out / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]]
    return np.concatenate(parts)


def _docs(out: Path, split: str) -> list[np.ndarray]:
    """Tokens of each document of a split (document index from the shards)."""
    toks = _tokens(out, split)
    starts = TokenShards(out).split(split).doc_starts
    ends = [*starts[1:], len(toks)]
    return [toks[a:b] for a, b in zip(starts, ends, strict=True)]


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.*"))}


def test_bytes_shards_equal_load_corpus(corpus, tmp_path):
    res = prepare_corpus([corpus], tmp_path / "out", val_fraction=VAL, progress=False)
    m = res.manifest
    assert res.status == "prepared" and m["split_rule"] == "by-file"
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == 256
    for split in ("train", "val"):
        ref = load_corpus([corpus], split=split, val_fraction=VAL)
        np.testing.assert_array_equal(_tokens(tmp_path / "out", split), ref.data.numpy())
        got_starts = TokenShards(tmp_path / "out").split(split).doc_starts
        np.testing.assert_array_equal(got_starts, ref.doc_starts.numpy())
        s = m["splits"][split]
        assert s["documents"] == len(ref.files)
        assert s["bytes"] == sum(f.stat().st_size for f in ref.files)
        assert s["tokens"] == s["bytes"] + s["documents"]  # one end-of-document byte each


def test_bpe_documents_decode_to_their_files(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_files, "PIECE_BYTES", 300)  # many pieces per file, many units
    out = tmp_path / "out"
    m = prepare_corpus(
        [corpus], out, tokenizer="bpe:400", val_fraction=VAL, progress=False
    ).manifest
    tok = load_tokenizer(out / "tokenizer")
    assert m["tokenizer"]["name"] == "bpe:400" and m["tokenizer"]["vocab_size"] == tok.vocab_size
    files, _ = collect_text_files([corpus])
    texts = {split: [] for split in ("train", "val")}
    for f, rel in files:
        texts[split_of(rel, VAL)].append(f.read_text(encoding="utf-8"))
    for split in ("train", "val"):
        docs = _docs(out, split)
        assert len(docs) == len(texts[split]) == m["splits"][split]["documents"]
        for ids, text in zip(docs, texts[split], strict=True):
            assert ids[-1] == tok.eos_id
            # cutting files into pieces at line breaks after a non-blank byte does not change
            # the tokenization: the pieces' ids equal the whole document's
            assert ids[:-1].tolist() == tok.encode(text)
        assert m["splits"][split]["bytes"] == sum(len(t.encode()) for t in texts[split])


def test_pieces_tokenize_exactly_like_the_whole_file(tmp_path, monkeypatch):
    """Lines ending in blanks and punctuation: cutting before any newline would change ids."""
    monkeypatch.setattr(corpus_files, "PIECE_BYTES", 200)
    # trailing blanks before indented lines: " \n    " is one GPT-2 pre-token and BPE merges it
    rng = random.Random(0)
    lines = [
        " " * rng.choice([0, 4]) + "w" * rng.randint(1, 9) + rng.choice(["", " ", "."])
        for _ in range(600)
    ]
    text = "\n".join(lines) + "\n\n\n"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(text)
    out = tmp_path / "out"
    prepare_corpus([tmp_path / "c"], out, tokenizer="bpe:500", val_fraction=0.5, progress=False)
    tok = load_tokenizer(out / "tokenizer")
    assert tok.encode(" \n    w")[0] != tok.encode(" ")[0]  # the blank before the newline merged
    train, val = (_docs(out, s)[0][:-1].tolist() for s in ("train", "val"))
    cut = len(tok.decode(train).encode())
    assert train == tok.encode(text[:cut]) and val == tok.encode(text[cut:])
    units, _ = corpus_files.plan_units([(tmp_path / "c" / "a.txt", "a.txt")], 0.5)
    assert len(units) > 10  # the file really was cut into many pieces


def test_output_does_not_depend_on_workers(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_files, "PIECE_BYTES", 500)
    kw = dict(tokenizer="bpe:300", val_fraction=VAL, shard_tokens=700, progress=False)
    a = prepare_corpus([corpus], tmp_path / "a", workers=1, **kw).manifest
    b = prepare_corpus([corpus], tmp_path / "b", workers=2, **kw).manifest
    assert len(a["splits"]["train"]["shards"]) > 2  # several shards: windows will span them
    assert a["splits"] == b["splits"]
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")


def test_a_prepared_tokenizer_folder_can_be_reused(corpus, tmp_path):
    a = prepare_corpus([corpus], tmp_path / "a", tokenizer="bpe:300", progress=False).manifest
    spec = str(tmp_path / "a" / "tokenizer")
    b = prepare_corpus([corpus / "sub"], tmp_path / "b", tokenizer=spec, progress=False).manifest
    assert b["tokenizer"] == a["tokenizer"]  # same name (bpe:300), vocabulary and eos
    # its own folder's tokenizer, re-prepared in place for other inputs
    c = prepare_corpus([corpus], tmp_path / "a", tokenizer=spec, progress=False)
    assert c.status == "prepared" and c.manifest["tokenizer"] == a["tokenizer"]
    assert c.manifest["splits"] == a["splits"]


def test_single_file_is_split_inside_the_file(tmp_path, text_of):
    f = tmp_path / "one.txt"
    text = text_of(3, n_lines=200)
    f.write_text(text, encoding="utf-8")
    m = prepare_corpus([f], tmp_path / "out", val_fraction=0.1, progress=False).manifest
    assert m["split_rule"] == "within-file"
    train, val = (
        bytes(_tokens(tmp_path / "out", s)[:-1].astype(np.uint8)) for s in ("train", "val")
    )
    assert train + val == text.encode()  # head + tail, nothing lost or repeated
    assert train.endswith(b"\n") is False and val.startswith(b"\n")  # cut before a line break
    assert 0.05 < len(val) / len(text.encode()) < 0.15


def test_too_little_text_for_two_splits_is_an_error(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("a")
    with pytest.raises(ValueError, match="no val text"):
        prepare_corpus([f], tmp_path / "out", progress=False)


def test_skips_binary_hidden_pycache_and_its_own_output(corpus, tmp_path):
    (corpus / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    (corpus / "__pycache__").mkdir()
    (corpus / "__pycache__" / "x.txt").write_text("cached")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "HEAD").write_text("ref")
    (corpus / "empty.txt").write_text("")
    out = corpus / "tok"  # output inside the input folder
    m1 = prepare_corpus([corpus], out, val_fraction=VAL, progress=False).manifest
    assert m1["files"] == 14 and m1["skipped_files"] == 4
    assert prepare_corpus([corpus], out, val_fraction=VAL, progress=False).status == "up-to-date"
    only_sub, _ = collect_text_files([corpus], suffixes=[".txt"])
    assert all(f.suffix == ".txt" for f, _ in only_sub)


def test_rerun_is_a_no_op_until_the_inputs_change(corpus, tmp_path):
    out = tmp_path / "out"
    kw = dict(tokenizer="bpe:300", val_fraction=VAL, progress=False)
    first = prepare_corpus([corpus], out, **kw)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*-*.*")}
    again = prepare_corpus([corpus], out, **kw)
    assert again.status == "up-to-date" and again.manifest == first.manifest
    os.utime(corpus / "doc01.txt", ns=(1, 1))  # touched, same content: still a no-op
    assert prepare_corpus([corpus], out, **kw).status == "up-to-date"
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*-*.*")} == stamp
    (corpus / "doc01.txt").write_text("new text\n" * 50)
    changed = prepare_corpus([corpus], out, **kw)
    assert changed.status == "prepared"
    assert changed.manifest["inputs_hash"] != first.manifest["inputs_hash"]
    other = prepare_corpus([corpus], out, **{**kw, "val_fraction": 0.3})  # settings changed
    assert other.status == "prepared" and other.manifest["settings"]["val_fraction"] == 0.3
    (out / "val-00000.bin").unlink()  # a damaged folder is re-prepared, not "up to date"
    assert prepare_corpus([corpus], out, **{**kw, "val_fraction": 0.3}).status == "prepared"
    TokenShards(out, verify=True)


class _Crash(Exception):
    pass


def _crash_after(monkeypatch, n_units: int) -> None:
    real = prep._Encoder.__call__
    calls = {"n": 0}

    def flaky(self, unit):
        calls["n"] += 1
        if calls["n"] > n_units:
            raise _Crash("killed")
        return real(self, unit)

    monkeypatch.setattr(prep._Encoder, "__call__", flaky)


def test_interrupted_run_leaves_no_manifest_and_resumes_to_the_same_shards(
    corpus, tmp_path, monkeypatch
):
    monkeypatch.setattr(corpus_files, "PIECE_BYTES", 400)
    kw = dict(tokenizer="bpe:300", val_fraction=VAL, shard_tokens=600, progress=False)
    clean = prepare_corpus([corpus], tmp_path / "clean", **kw)
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _crash_after(mp, 9)
        with pytest.raises(_Crash):
            prepare_corpus([corpus], out, **kw)
    assert not (out / "manifest.json").exists() and not list(out.glob(".*.bin.tmp"))
    with pytest.raises(ShardError, match="not found"):
        TokenShards(out)
    done = json.loads((out / ".prepare-progress.json").read_text())["units_done"]
    assert 0 < done <= 9
    resumed = prepare_corpus([corpus], out, **kw)
    assert resumed.status == "resumed"
    assert resumed.manifest["splits"] == clean.manifest["splits"]
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert not (out / ".prepare-progress.json").exists()


def test_re_preparing_new_inputs_removes_the_old_manifest_first(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_corpus([corpus], out, val_fraction=VAL, progress=False)
    (corpus / "doc02.txt").write_text("changed\n" * 30)
    with monkeypatch.context() as mp:
        _crash_after(mp, 0)
        with pytest.raises(_Crash):
            prepare_corpus([corpus], out, val_fraction=VAL, progress=False)
    assert not (out / "manifest.json").exists()  # never an old manifest over new shards
    assert prepare_corpus([corpus], out, val_fraction=VAL, progress=False).status == "resumed"
    TokenShards(out, verify=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(text=[]), "at least one"),
        (dict(text=["/no/such/file"]), "does not exist"),
        (dict(tokenizer="bpe:100"), ">= 257"),
        (dict(tokenizer="sentencepiece"), "is not 'bytes'"),
        (dict(val_fraction=0.0), "val-fraction"),
        (dict(val_fraction=1.0), "val-fraction"),
        (dict(val_fraction=float("nan")), "val-fraction"),
        (dict(workers=0), "workers"),
        (dict(shard_tokens=0), "shard-tokens"),
        (dict(out="FILE"), "is a file"),
        (dict(out="FILE/sub"), "cannot be created"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, match, corpus, tmp_path):
    (tmp_path / "FILE").write_text("x")
    args = dict(text=[corpus], tokenizer="bytes", out=tmp_path / "out")
    args.update(kwargs)
    if isinstance(args["out"], str):
        args["out"] = tmp_path / args["out"]
    text, tokenizer, out = args.pop("text"), args.pop("tokenizer"), args.pop("out")
    with pytest.raises(ValueError, match=match) as info:
        check_prepare_args(text, tokenizer, out, **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
