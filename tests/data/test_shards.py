"""TokenShards / ShardBatches: windows, determinism, ranks, cu_seqlens, validation, bits/byte."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from batchcraft.data import corpus_files
from batchcraft.data.manifest import ShardError
from batchcraft.data.prepare import prepare_corpus
from batchcraft.data.shards import TokenShards, bits_per_byte, pack_batch
from batchcraft.nn.rope import check_cu_seqlens

T = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_writer) -> Path:
    """A BPE corpus with several small shards per split (windows cross shard boundaries)."""
    root = tmp_path_factory.mktemp("shards")
    corpus = corpus_writer(root / "corpus")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_files, "PIECE_BYTES", 600)
        prepare_corpus(
            [corpus], root / "out", tokenizer="bpe:300", val_fraction=0.25, shard_tokens=900,
            progress=False,
        )  # fmt: skip
    return root / "out"


@pytest.fixture
def copy_of(prepared, tmp_path):
    """A private copy of the prepared folder, for tests that damage it."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(prepared, dst)
    return dst


def _all_tokens(folder: Path, split: str) -> np.ndarray:
    m = json.loads((folder / "manifest.json").read_text())
    return np.concatenate(
        [np.fromfile(folder / s["file"], dtype=m["dtype"]) for s in m["splits"][split]["shards"]]
    ).astype(np.int64)


def test_windows_are_the_tokens_on_disk_even_across_shards(prepared):
    shards = TokenShards(prepared)
    flat = _all_tokens(prepared, "train")
    assert len(shards.manifest["splits"]["train"]["shards"]) >= 3
    b = shards.batches(4, T, seed=3)
    crossed = 0
    offsets = shards.split("train").offsets
    for step in range(20):
        tokens, _ = b.get(step)
        assert tokens.shape == (4, T + 1) and tokens.dtype == torch.int64
        for row, s in zip(tokens, b.window_starts(step), strict=True):
            np.testing.assert_array_equal(row.numpy(), flat[s : s + T + 1])
            crossed += int(any(s < o < s + T + 1 for o in offsets[1:-1]))
    assert crossed > 0


def test_batch_i_is_a_pure_function_of_seed_and_i(prepared):
    a = TokenShards(prepared).batches(4, T, seed=7)
    b = TokenShards(prepared).batches(4, T, seed=7)
    for step in (0, 1, 2, 3):
        a.get(step)
    late = b.get(250)  # fresh stream, no history: same batch as the stream that got there
    assert torch.equal(a.get(250)[0], late[0]) and torch.equal(a.get(250)[1], late[1])
    assert not torch.equal(a.get(0)[0], TokenShards(prepared).batches(4, T, seed=8).get(0)[0])
    it = a.iterate(start_step=5)
    assert torch.equal(next(it)[0], b.get(5)[0]) and torch.equal(next(it)[0], b.get(6)[0])


def test_an_epoch_visits_non_overlapping_windows_once(prepared):
    b = TokenShards(prepared).batches(1, T, seed=0)
    n = b.windows_per_epoch
    starts = [b.window_starts(i)[0] for i in range(n)]
    assert len(set(starts)) == n
    offset = starts[0] % T
    assert all(s % T == offset for s in starts)  # one offset per epoch, windows T apart
    assert max(starts) + T + 1 <= len(b.tokens)
    nxt = [b.window_starts(i)[0] for i in range(n, 2 * n)]
    assert nxt != starts  # the next epoch is reshuffled


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_slices_of_the_single_process_batch(prepared, world):
    shards = TokenShards(prepared)
    single = shards.batches(2 * world, T, seed=1)
    for step in (0, 1, 9):
        parts = [shards.batches(2, T, seed=1, rank=r, world_size=world) for r in range(world)]
        starts = [p.window_starts(step) for p in parts]
        assert [s for st in starts for s in st] == single.window_starts(step)
        assert len({s for st in starts for s in st}) == 2 * world
        rows = torch.cat([p.get(step)[0] for p in parts])
        assert torch.equal(rows, single.get(step)[0])


def test_cu_seqlens_mark_rows_and_document_starts(prepared):
    shards = TokenShards(prepared)
    doc_starts = shards.split("train").doc_starts
    b = shards.batches(3, T, seed=2)
    seen_inner = 0
    for step in range(15):
        tokens, cu = b.get(step)
        assert cu is not None and cu.dtype == torch.int32
        check_cu_seqlens(cu, 1, 3 * T)  # the model's own check of a packed B = 1 batch
        expected = {0, 3 * T}
        for r, s in enumerate(b.window_starts(step)):
            expected.add(r * T)
            # brute force: document id of every input position, a boundary where it changes
            doc = np.searchsorted(doc_starts, np.arange(s, s + T), side="right")
            expected.update(r * T + int(i) for i in np.nonzero(np.diff(doc))[0] + 1)
        assert cu.tolist() == sorted(expected)
        seen_inner += len(expected) - 4
    assert seen_inner > 0  # some windows did hold several documents
    eos = shards.eos_id
    tokens, cu = b.get(0)
    flat = tokens[:, :-1].reshape(-1)
    for c in cu[1:-1].tolist():  # every inner boundary that is not a row start follows an EOS
        if c % T:
            assert int(flat[c - 1]) == eos
    assert b.get(0)[1] is not None
    assert shards.batches(3, T, packed=False).get(0)[1] is None


def test_pack_batch_masks_only_cross_document_targets(prepared):
    b = TokenShards(prepared).batches(3, T, seed=2)
    for step in range(10):
        tokens, cu = b.get(step)
        x, y, cu2 = pack_batch(tokens, cu)
        assert x.shape == y.shape == (1, 3 * T) and cu2 is cu
        want = tokens[:, 1:].reshape(-1).clone()
        for c in cu[1:-1].tolist():
            if c % T:  # a document start inside a row
                want[c - 1] = -100
        assert torch.equal(y[0], want) and torch.equal(x[0], tokens[:, :-1].reshape(-1))


def test_packed_forward_equals_separate_documents(prepared):
    """End to end: the windows' cu_seqlens make the LaCT LM reset at every boundary."""
    from batchcraft.models import LaCTForCausalLM, lact_tiny

    shards = TokenShards(prepared)
    torch.manual_seed(0)
    model = LaCTForCausalLM(lact_tiny(vocab_size=shards.vocab_size, chunk_size=8, window_size=8))
    model = model.double().eval()
    b = shards.batches(2, 48, seed=5)
    step = next(i for i in range(100) if len(b.get(i)[1]) > 3)  # a row holds two documents
    tokens, cu = b.get(step)
    x, _, cu = pack_batch(tokens, cu)
    with torch.no_grad():
        packed = model(x, cu_seqlens=cu).logits[0]
        bounds = cu.tolist()
        for a, e in itertools.pairwise(bounds):
            alone = model(x[:, a:e]).logits[0]
            torch.testing.assert_close(packed[a:e], alone, rtol=1e-9, atol=1e-9)


def test_sequential_windows_cover_the_split_once_across_ranks(prepared):
    shards = TokenShards(prepared)
    flat = _all_tokens(prepared, "val")
    n_win = (len(flat) - 1) // T
    got = []
    for r in range(2):
        for tokens, _ in shards.batches(3, T, split="val", rank=r, world_size=2).sequential():
            got += [tuple(row.tolist()) for row in tokens]
    want = {tuple(flat[k * T : k * T + T + 1].tolist()) for k in range(n_win)}
    assert len(got) == n_win and set(got) == want
    capped = list(shards.batches(3, T, split="val").sequential(max_batches=2))
    assert len(capped) == 2


def test_pickling_a_stream_does_not_copy_the_shards(prepared):
    import pickle

    b = TokenShards(prepared).batches(2, T, seed=4)
    want = b.get(3)
    assert b.tokens._maps  # shards are mapped after a read
    copy = pickle.loads(pickle.dumps(b))
    assert copy.tokens._maps == {}  # re-mapped lazily in the new process, never copied
    got = copy.get(3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_check_vocab_and_bits_per_byte(prepared):
    shards = TokenShards(prepared)
    v = shards.vocab_size
    shards.check_vocab(v)
    shards.check_vocab(v + 64, allow_padding=True)
    for bad in (256, v + 64):
        with pytest.raises(ShardError, match=f"vocab_size={v}"):
            shards.check_vocab(bad)
    s = shards.manifest["splits"]["val"]
    assert shards.bytes_per_token("val") == s["bytes"] / s["tokens"] > 1.5
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)  # a byte model at 1 bit/token
    assert shards.bits_per_byte(2.0) == pytest.approx(2.0 / math.log(2) * s["tokens"] / s["bytes"])
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0.0)
    assert shards.tokenizer.vocab_size == v
    assert "bpe:300" in repr(shards)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(context=0), "context"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(rank=-1), "rank"),
        (dict(context=10**7), "fewer than context"),
    ],
)
def test_bad_batch_arguments(prepared, kwargs, match):
    args = dict(batch_size=2, context=T)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TokenShards(prepared).batches(args.pop("batch_size"), args.pop("context"), **args)


# ---------------------------------------------------------------- damaged folders


def _edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _first_shard(folder: Path) -> Path:
    return folder / "train-00000.bin"


DAMAGE = {
    "no folder": (lambda f: __import__("shutil").rmtree(f), "does not exist"),
    "no manifest": (lambda f: (f / "manifest.json").unlink(), "not found"),
    "manifest not json": (lambda f: (f / "manifest.json").write_text("{"), "not valid JSON"),
    "other format": (lambda f: _edit_manifest(f, lambda m: m.update(format="x")), "not a batch"),
    "newer version": (lambda f: _edit_manifest(f, lambda m: m.update(version=2)), "version 2"),
    "dtype vs vocab": (lambda f: _edit_manifest(f, lambda m: m.update(dtype="uint32")), "dtype"),
    "shard missing": (lambda f: _first_shard(f).unlink(), "missing"),
    "shard truncated": (
        lambda f: _first_shard(f).write_bytes(_first_shard(f).read_bytes()[:-2]),
        "truncated",
    ),
    "docs missing": (lambda f: (f / "val-00000.docs.npy").unlink(), "document index"),
    "docs garbage": (lambda f: (f / "train-00000.docs.npy").write_bytes(b"junk"), "corrupt"),
    "count mismatch": (
        lambda f: _edit_manifest(f, lambda m: m["splits"]["train"].update(tokens=1)),
        "token count",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_folders_give_one_clear_line(copy_of, case):
    damage, match = DAMAGE[case]
    damage(copy_of)
    with pytest.raises(ShardError, match=match) as info:
        TokenShards(copy_of).split("train")
    assert "\n" not in str(info.value)


def test_flipped_bytes_are_found_by_verify_or_by_the_id_check(copy_of):
    p = _first_shard(copy_of)
    raw = bytearray(p.read_bytes())
    raw[10:12] = b"\xff\xff"  # id 65535 >= vocabulary: same size, different content
    p.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="checksum"):
        TokenShards(copy_of, verify=True)
    b = TokenShards(copy_of).batches(1, T)  # size check passes; reading the window catches it
    with pytest.raises(ShardError, match="corrupt shard"):
        next(b.sequential())
