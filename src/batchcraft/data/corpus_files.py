"""Which bytes of which files go where: listing text files, the train/val split, work units.

Used by :func:`batchcraft.data.prepare.prepare_corpus`; see its module for the rules.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchcraft.data.manifest import SPLITS, file_hash
from batchcraft.data.text import split_of

__all__ = [
    "PIECE_BYTES",
    "Segment",
    "WorkUnit",
    "collect_text_files",
    "content_key",
    "digest",
    "plan_units",
    "read_segment",
    "stat_key",
]

PIECE_BYTES = 1 << 20  # target size of a work unit (and of the pieces a big file is cut into)
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass(frozen=True)
class Segment:
    """Bytes ``[start, end)`` of one file; ``first``/``last``: it starts/ends a document."""

    path: str
    start: int
    end: int
    first: bool
    last: bool


@dataclass(frozen=True)
class WorkUnit:
    """One task for a worker: consecutive segments of one split."""

    split: str
    segments: tuple[Segment, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.end - s.start for s in self.segments)


def _looks_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def collect_text_files(
    text: Sequence[str | os.PathLike[str]],
    *,
    suffixes: Sequence[str] = (),
    exclude: str | os.PathLike[str] | None = None,
) -> tuple[list[tuple[Path, str]], int]:
    """The non-empty text files named or found under ``text``, sorted by path.

    Args:
        text: files and folders.
        suffixes: keep only files found in folders with one of these suffixes (``".py"``).
        exclude: a folder whose files are never taken (the output folder).

    Returns:
        ``[(path, relative name)]`` (relative to the folder given, or the file name) and the
        number of files skipped: under hidden folders or ``__pycache__``, binary (a NUL byte in
        the first 8 KiB) or empty.
    """
    ex = Path(exclude).resolve() if exclude is not None else None
    found: dict[Path, str] = {}
    skipped = 0
    for t in map(Path, text):
        if t.is_file():
            found[t] = t.name
            continue
        if not t.is_dir():
            raise ValueError(f"--text {str(t)!r} is neither a file nor a folder")
        for f in t.rglob("*"):
            rel = f.relative_to(t)
            if not f.is_file() or (suffixes and f.suffix not in suffixes):
                continue
            if ex is not None and ex in f.resolve().parents:
                continue
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                skipped += 1
                continue
            found[f] = str(rel)
    files = []
    for f in sorted(found):
        if f.stat().st_size == 0 or _looks_binary(f):
            skipped += 1
        else:
            files.append((f, found[f]))
    return files, skipped


def digest(obj: Any) -> str:
    """BLAKE2b-128 of an object's canonical JSON."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).hexdigest()


def stat_key(files: list[tuple[Path, str]]) -> str:
    """Hash of every file's absolute path, size and modification time (the cheap no-op test)."""
    st = []
    for f, _ in files:
        s = os.stat(f)
        st.append((os.path.abspath(f), s.st_size, s.st_mtime_ns))
    return digest(st)


def content_key(files: list[tuple[Path, str]]) -> str:
    """Hash of every file's relative name, size and contents (machine independent)."""
    return digest([(rel, f.stat().st_size, file_hash(f)) for f, rel in files])


# ------------------------------------------------------------------ planning the work


def _cut_at(mm: mmap.mmap, pos: int, end: int) -> int | None:
    """First offset in ``[pos, end)`` of a newline right after an ASCII letter or digit, else None.

    Every common byte-level pre-tokenizer (GPT-2, Llama 3, Qwen 2, GPT-4o regexes) ends a
    pre-token between a letter/digit and a newline, and BPE never merges across pre-tokens, so
    tokenizing the pieces gives the same ids as tokenizing the whole file.
    """
    while True:
        i = mm.find(b"\n", pos, end)
        if i < 0:
            return None
        if i > 0 and mm[i - 1] in _WORD:
            return i
        pos = i + 1


def _char_boundary(mm: mmap.mmap, pos: int, end: int) -> int:
    """``pos`` moved forward past UTF-8 continuation bytes (never splits a character)."""
    while pos < end and mm[pos] & 0xC0 == 0x80:
        pos += 1
    return pos


def _pieces(mm: mmap.mmap, start: int, end: int) -> list[tuple[int, int]]:
    out, a = [], start
    while end - a > PIECE_BYTES:
        c = _cut_at(mm, a + PIECE_BYTES, end)
        if c is None:
            break
        out.append((a, c))
        a = c
    out.append((a, end))
    return out


def plan_units(files: list[tuple[Path, str]], val_fraction: float) -> tuple[list[WorkUnit], str]:
    """Work units in output order (all train units, then all val units) and the split rule."""
    by_hash = [split_of(rel, val_fraction) for _, rel in files]
    rule = "by-file" if {"train", "val"} <= set(by_hash) else "within-file"
    docs: dict[str, list[tuple[Path, int, int]]] = {"train": [], "val": []}
    for (f, _), split in zip(files, by_hash, strict=True):
        size = f.stat().st_size
        if rule == "by-file":
            docs[split].append((f, 0, size))
            continue
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            target = min(max(1, int(size * (1.0 - val_fraction))), size - 1)
            cut = _cut_at(mm, target, size) or _char_boundary(mm, target, size)
        if 0 < cut < size:
            docs["train"].append((f, 0, cut))
            docs["val"].append((f, cut, size))
        else:  # too short to cut
            docs["train"].append((f, 0, size))
    for split in SPLITS:
        if not docs[split]:
            raise ValueError(
                f"no {split} text: the input is too small to carve a validation split from "
                f"(files: {len(files)}); add text or change --val-fraction"
            )
    units: list[WorkUnit] = []
    for split in SPLITS:
        segs: list[Segment] = []
        for f, a, b in docs[split]:
            pieces = [(a, b)]
            if b - a > PIECE_BYTES:
                with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    pieces = _pieces(m, a, b)
            for k, (s, e) in enumerate(pieces):
                segs.append(Segment(str(f), s, e, first=k == 0, last=k == len(pieces) - 1))
        group: list[Segment] = []
        size = 0
        for seg in segs:  # group small segments so a unit is ~PIECE_BYTES
            group.append(seg)
            size += seg.end - seg.start
            if size >= PIECE_BYTES:
                units.append(WorkUnit(split, tuple(group)))
                group, size = [], 0
        if group:
            units.append(WorkUnit(split, tuple(group)))
    return units, rule


def read_segment(seg: Segment) -> bytes:
    with open(seg.path, "rb") as f:
        f.seek(seg.start)
        return f.read(seg.end - seg.start).replace(b"\x00", b"")
