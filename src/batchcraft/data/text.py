"""Byte-level text corpora: the embedded default is the running interpreter's standard library.

Every file is read as raw bytes (vocabulary 256, no tokenizer to download), files are sorted by
path, and the train/validation split is decided per file by a hash of its relative path (so it
is the same on every machine and does not move when files are added). Documents are separated
by a 0 byte (absent from Python source) and their boundaries are kept for packed training.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "ByteBatches",
    "ByteCorpus",
    "ByteTokenizer",
    "load_corpus",
    "load_text_splits",
    "split_of",
    "stdlib_files",
    "text_files",
]

DOC_SEP = 0


class ByteTokenizer:
    """Identity byte tokenizer: ``encode(str) -> [T] int64`` in ``[0, 256)``."""

    vocab_size = 256

    def encode(self, text: str) -> Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        vals = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return bytes(int(i) % 256 for i in vals).decode("utf-8", errors="replace")


def stdlib_files() -> list[Path]:
    """Sorted ``.py`` files of this interpreter's standard library (no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in root.rglob("*.py")
        if not ({"site-packages", "dist-packages"} & set(p.relative_to(root).parts))
    )


def text_files(paths: Sequence[str | Path], suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Files named in ``paths`` plus every file under the named folders, sorted."""
    out: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            out.update(
                f for f in p.rglob("*") if f.is_file() and (not suffixes or f.suffix in suffixes)
            )
        elif p.is_file():
            out.add(p)
        else:
            raise ValueError(f"text path {str(p)!r} is neither a file nor a folder")
    return sorted(out)


def split_of(rel_path: str, val_fraction: float = 0.05) -> str:
    """``"val"`` or ``"train"`` from a SHA-1 hash of the relative path (deterministic)."""
    h = int.from_bytes(hashlib.sha1(rel_path.encode("utf-8")).digest()[:8], "big")
    return "val" if h / 2.0**64 < val_fraction else "train"


@dataclass
class ByteCorpus:
    """A byte stream with document boundaries.

    Attributes:
        data: ``[N]`` uint8 bytes, documents joined by a 0 byte.
        doc_starts: ``[Ndoc]`` int64 start offset of each document in ``data``.
        files: the files it was read from.
    """

    data: Tensor
    doc_starts: Tensor
    files: list[Path]

    def __len__(self) -> int:
        return int(self.data.numel())


def load_corpus(
    paths: Sequence[str | Path] | None = None,
    *,
    split: str = "train",
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
) -> ByteCorpus:
    """Read a byte corpus split.

    Args:
        paths: files or folders; ``None`` uses :func:`stdlib_files`.
        split: ``"train"``, ``"val"`` or ``"all"`` (every file).
        val_fraction: fraction of files (by hash) held out for validation.
        max_bytes: stop after this many bytes (files in sorted order; the last one is cut).

    Returns:
        A :class:`ByteCorpus`.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    if paths is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [(f, str(f.relative_to(root))) for f in stdlib_files()]
    else:  # hash the path relative to the folder given, so the split is machine independent
        files = []
        for p in map(Path, paths):
            base = p if p.is_dir() else p.parent
            files += [(f, str(f.relative_to(base))) for f in text_files([p])]
        files.sort()
    chosen: list[Path] = []
    chunks: list[bytes] = []
    starts: list[int] = []
    total = 0
    for f, rel in files:
        if split != "all" and split_of(rel, val_fraction) != split:
            continue
        raw = f.read_bytes().replace(b"\x00", b"")
        if not raw:
            continue
        if max_bytes is not None and total + len(raw) + 1 > max_bytes:
            raw = raw[: max(0, max_bytes - total - 1)]
        starts.append(total)
        chunks.append(raw + bytes([DOC_SEP]))
        chosen.append(f)
        total += len(raw) + 1
        if max_bytes is not None and total >= max_bytes:
            break
    if not chunks:
        raise ValueError(f"no {split} text found in {paths or 'the standard library'}")
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    return ByteCorpus(data=data, doc_starts=torch.tensor(starts, dtype=torch.long), files=chosen)


def _cut_documents(corpus: ByteCorpus, fraction: float) -> tuple[ByteCorpus, ByteCorpus]:
    """Split every document by bytes: its first ``1 - fraction`` to train, the rest to val."""
    bounds = [*corpus.doc_starts.tolist(), len(corpus)]
    tr: list[bytes] = []
    va: list[bytes] = []
    raw = corpus.data.numpy().tobytes()
    for s0, e0 in itertools.pairwise(bounds):
        doc = raw[s0 : e0 - 1]  # without the separator
        cut = len(doc) - max(1, round(fraction * len(doc)))
        tr.append(doc[:cut])
        va.append(doc[cut:])
    return _join(tr, corpus.files), _join(va, corpus.files)


def _join(docs: list[bytes], files: list[Path]) -> ByteCorpus:
    starts, total, chunks = [], 0, []
    for d in docs:
        if not d:
            continue
        starts.append(total)
        chunks.append(d + bytes([DOC_SEP]))
        total += len(d) + 1
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    return ByteCorpus(data=data, doc_starts=torch.tensor(starts, dtype=torch.long), files=files)


def load_text_splits(
    text: Sequence[str | Path] | None = None,
    *,
    val_text: Sequence[str | Path] | None = None,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
) -> tuple[ByteCorpus, ByteCorpus]:
    """Train and validation corpora from the user's files (or the standard library).

    * ``val_text`` given: train on all of ``text``, validate on all of ``val_text``.
    * otherwise files are split by a hash of their path (:func:`split_of`); when that leaves
      either side empty (one file, or a few), every document is split inside instead: its last
      ``val_fraction`` of bytes is validation.

    Raises:
        ValueError: a path does not exist, nothing is readable, or ``val_fraction`` is outside
            ``(0, 1)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    for p in [*(text or []), *(val_text or [])]:
        if not Path(p).exists():
            raise FileNotFoundError(f"text path {str(p)!r} does not exist")
    if val_text:
        return (
            load_corpus(text, split="all", max_bytes=max_bytes),
            load_corpus(val_text, split="all", max_bytes=max_bytes),
        )
    try:
        return (
            load_corpus(text, split="train", val_fraction=val_fraction, max_bytes=max_bytes),
            load_corpus(text, split="val", val_fraction=val_fraction, max_bytes=max_bytes),
        )
    except ValueError:
        if text is None:
            raise
    return _cut_documents(load_corpus(text, split="all", max_bytes=max_bytes), val_fraction)


class ByteBatches:
    """Random ``[B, T + 1]`` windows of a corpus, reproducible from ``(seed, step)``.

    Batch ``i`` is drawn from a generator seeded with ``seed`` and ``i`` only, so a resumed run
    at step ``i`` sees exactly the batches an uninterrupted run would have seen.

    Example::

        batches = ByteBatches(load_corpus(max_bytes=2**20), batch_size=8, context=256, seed=0)
        x = batches.get(0)          # [8, 257] int64; inputs x[:, :-1], targets x[:, 1:]
    """

    def __init__(self, corpus: ByteCorpus, *, batch_size: int, context: int, seed: int = 0):
        if len(corpus) < context + 2:
            raise ValueError(
                f"corpus has {len(corpus)} bytes, fewer than context + 2 = {context + 2}"
            )
        self.corpus, self.batch_size, self.context, self.seed = corpus, batch_size, context, seed

    def get(self, step: int) -> Tensor:
        """Batch number ``step``: ``[B, T + 1]`` int64."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        hi = len(self.corpus) - self.context - 1
        starts = torch.randint(0, hi, (self.batch_size,), generator=g)  # [B]
        idx = starts[:, None] + torch.arange(self.context + 1)  # [B, T + 1]
        return self.corpus.data[idx].long()

    def iterate(self, start_step: int = 0) -> Iterator[Tensor]:
        """Endless stream of batches from ``start_step``."""
        step = start_step
        while True:
            yield self.get(step)
            step += 1

    def sequential(self, max_batches: int | None = None) -> Iterator[Tensor]:
        """Non-overlapping windows in order (evaluation): ``[B, T + 1]`` each."""
        n_win = (len(self.corpus) - 1) // self.context
        n_batches = math.ceil(n_win / self.batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for i in range(n_batches):
            w = torch.arange(i * self.batch_size, min(n_win, (i + 1) * self.batch_size))
            idx = w[:, None] * self.context + torch.arange(self.context + 1)
            yield self.corpus.data[idx].long()
