"""Tokenize text files once into memory-mapped token shards (``batchcraft data prepare``).

Pipeline: list the files (sorted; hidden folders, ``__pycache__``, binary files and the output
folder skipped) -> hash them -> split train/val per file -> train the BPE tokenizer on the
train files when asked -> tokenize in worker processes -> write shards -> write the manifest.
The layout is described in :mod:`batchcraft.data.manifest`.

* **Split.** Each file is a document; it goes to ``val`` when a hash of its path relative to
  the folder given falls below ``val_fraction`` (the rule of
  :func:`batchcraft.data.text.load_corpus`, so it is the same on every machine and does not
  move when files are added). When that leaves either split empty (one file, or a few), every
  file is cut instead at a line break near ``1 - val_fraction`` of its length: the head goes to
  train, the tail to val (``split_rule: "within-file"`` in the manifest).
* **Determinism.** The output does not depend on ``workers``: files are cut into pieces of
  about 1 MiB just before a line break that follows a letter or digit (where byte-level
  pre-tokenizers split anyway, so the ids equal those of the whole file), pieces are grouped
  into work units, and units are written in order.
* **No-op and resume.** A re-run with the same settings and inputs (same sizes and
  modification times, else the same contents) does nothing. Shards are written under temporary
  names and renamed when complete; after each, ``.prepare-progress.json`` records what is done,
  so an interrupted run resumes from the last complete shard; ``manifest.json`` is written last,
  atomically, and removed first when a folder is re-prepared for new inputs, so a manifest never
  points at partial shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from batchcraft.data import corpus_files
from batchcraft.data.corpus_files import (
    WorkUnit,
    collect_text_files,
    content_key,
    digest,
    plan_units,
    read_segment,
    stat_key,
)
from batchcraft.data.manifest import (
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    ShardError,
    check_shards,
    dtype_for_vocab,
    file_hash,
    read_manifest,
)
from batchcraft.data.tokenizers import (
    BytesTokenizer,
    Tokenizer,
    TokenizerSpec,
    load_tokenizer,
    parse_tokenizer_spec,
    train_bpe,
)
from batchcraft.utils.io import atomic_write, check_writable_dir, load_json, write_json
from batchcraft.utils.progress import progress_bar

__all__ = ["PrepareResult", "check_prepare_args", "collect_text_files", "prepare_corpus"]

log = logging.getLogger(__name__)

PROGRESS = ".prepare-progress.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class PrepareResult:
    """What :func:`prepare_corpus` did: ``status`` is ``prepared``, ``resumed`` or ``up-to-date``."""

    out: Path
    status: str
    manifest: dict[str, Any]
    seconds: float


# ------------------------------------------------------------------ arguments and inputs


def check_prepare_args(
    text: Sequence[str | os.PathLike[str]],
    tokenizer: str,
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.05,
    workers: int = 1,
    shard_tokens: int = 1 << 26,
) -> TokenizerSpec:
    """Validate every ``data prepare`` argument before any work; one sentence per error.

    Returns:
        The parsed tokenizer spec.

    Raises:
        ValueError: on the first bad argument.
    """
    if not text:
        raise ValueError("--text needs at least one file or folder")
    for t in text:
        if not Path(t).exists():
            raise ValueError(f"--text {str(t)!r} does not exist")
    if not isinstance(val_fraction, int | float) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers}")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be an integer >= 1, got {shard_tokens}")
    spec = parse_tokenizer_spec(tokenizer)
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise ValueError(f"--out {str(o)!r} is a file, not a folder")
    anc = o
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"--out {str(o)!r} cannot be created: {str(anc)!r} is a file")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(o)!r} is not writable ({str(anc)!r} denies writing)")
    return spec


# ------------------------------------------------------------------ workers


class _Encoder:
    """Tokenize one unit: ``(ids [n], document starts inside ids, text bytes)``."""

    def __init__(self, tok: Tokenizer, dtype: np.dtype):
        self.tok, self.dtype = tok, dtype

    def __call__(self, unit: WorkUnit) -> tuple[np.ndarray, list[int], int]:
        parts: list[np.ndarray] = []
        starts: list[int] = []
        n = nbytes = 0
        eos = self.tok.eos_id
        for seg in unit.segments:
            raw = read_segment(seg)
            if isinstance(self.tok, BytesTokenizer):
                ids = np.frombuffer(raw, dtype=np.uint8).astype(self.dtype)
            else:
                ids = np.asarray(self.tok.encode(raw.decode("utf-8", "replace")), self.dtype)
            if seg.first:
                starts.append(n)
            if seg.last and eos is not None:
                ids = np.append(ids, np.asarray([eos], self.dtype))
            parts.append(ids)
            n += len(ids)
            nbytes += len(raw)
        return np.concatenate(parts), starts, nbytes


_WORKER: _Encoder | None = None


def _init_worker(tok_dir: str, dtype: str) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    _WORKER = _Encoder(load_tokenizer(tok_dir), np.dtype(dtype))


def _work(unit: WorkUnit) -> tuple[np.ndarray, list[int], int]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(unit)


@contextlib.contextmanager
def _mapper(
    workers: int, tok: Tokenizer, tok_dir: Path, dtype: np.dtype
) -> Iterator[Callable[[list[WorkUnit]], Iterable[tuple[np.ndarray, list[int], int]]]]:
    """``map(units)`` in order: inline for one worker, else a process pool (fork when possible)."""
    if workers == 1:
        enc = _Encoder(tok, dtype)
        yield lambda units: map(enc, units)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # silences the fork warning of `tokenizers`
    try:
        pool = mp.get_context(method).Pool(workers, _init_worker, (str(tok_dir), dtype.str))
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    with pool:
        yield lambda units: pool.imap(_work, units, chunksize=1)


# ------------------------------------------------------------------ writing shards


class _ShardWriter:
    """Appends token arrays of one split to ``{split}-NNNNN.bin`` shards (temp name until full)."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int, done: list):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = list(done)
        self._f: BinaryIO | None = None

    def _open(self) -> None:
        self.name = f"{self.split}-{len(self.shards):05d}"
        self.tmp = self.root / f".{self.name}.bin.tmp"
        self._f = open(self.tmp, "wb")  # noqa: SIM115 (closed in _finish)
        self.hash = hashlib.blake2b(digest_size=16)
        self.tokens = self.bytes = 0
        self.docs: list[int] = []

    def add(self, ids: np.ndarray, starts: list[int], nbytes: int) -> bool:
        """Append one unit; returns True when that completed a shard."""
        if self._f is None:
            self._open()
        assert self._f is not None
        buf = ids.astype(self.dtype, copy=False).tobytes()
        self._f.write(buf)
        self.hash.update(buf)
        self.docs += [self.tokens + s for s in starts]
        self.tokens += len(ids)
        self.bytes += nbytes
        if self.tokens >= self.shard_tokens:
            self._finish()
            return True
        return False

    def _finish(self) -> None:
        assert self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        docs = f"{self.name}.docs.npy"
        arr = np.asarray(self.docs, dtype=np.int64)
        atomic_write(self.root / docs, lambda f: np.save(f, arr, allow_pickle=False))
        os.replace(self.tmp, self.root / f"{self.name}.bin")
        self.shards.append(
            {
                "file": f"{self.name}.bin",
                "docs": docs,
                "tokens": self.tokens,
                "bytes": self.bytes,
                "documents": len(self.docs),
                "blake2b": self.hash.hexdigest(),
            }
        )

    def close(self) -> None:
        """Finish the open shard, if any."""
        if self._f is not None:
            self._finish()

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            self.tmp.unlink(missing_ok=True)


def _clean(root: Path) -> None:
    """Remove every file an earlier prepare wrote into ``root`` (manifest first)."""
    (root / MANIFEST).unlink(missing_ok=True)
    for pat in ("train-*.bin", "val-*.bin", "*-*.docs.npy", ".*.tmp", PROGRESS):
        for p in root.glob(pat):
            p.unlink()
    for d in (root / TOKENIZER_DIR, root / f".{TOKENIZER_DIR}.tmp"):
        if d.is_dir():
            shutil.rmtree(d)


def _resume_state(root: Path, key: str) -> tuple[dict[str, Any], Tokenizer] | None:
    """The progress and tokenizer of an interrupted run with the same key, if its shards are
    intact; else None (the caller restarts from scratch)."""
    try:
        prog = load_json(root / PROGRESS)
        if not isinstance(prog, dict) or prog.get("key") != key:
            return None
        tok = load_tokenizer(root / TOKENIZER_DIR)
        itemsize = dtype_for_vocab(tok.vocab_size).itemsize
        for split in SPLITS:
            for sh in prog["shards"][split]:
                p = root / sh["file"]
                if not p.is_file() or p.stat().st_size != sh["tokens"] * itemsize:
                    return None
                if not (root / sh["docs"]).is_file():
                    return None
        return prog, tok
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None


# ------------------------------------------------------------------ the entry point


def _bpe_texts(units: list[WorkUnit], max_bytes: int) -> Iterator[str]:
    """Train-split text for BPE training, every k-th unit when there is more than ``max_bytes``."""
    train = [u for u in units if u.split == "train"]
    total = sum(u.nbytes for u in train)
    stride = max(1, math.ceil(total / max(1, max_bytes)))
    for u in train[::stride]:
        for seg in u.segments:
            yield read_segment(seg).decode("utf-8", "replace")


def _tokenizer_identity(spec: TokenizerSpec) -> str | None:
    if spec.path is None:
        return None
    if spec.path.is_file():
        return file_hash(spec.path)
    return digest([file_hash(p) for p in sorted(spec.path.glob("*.json"))])


def prepare_corpus(
    text: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    tokenizer: str = "bytes",
    val_fraction: float = 0.05,
    workers: int = 1,
    suffixes: Sequence[str] = (),
    shard_tokens: int = 1 << 26,
    bpe_max_bytes: int = 1 << 30,
    progress: bool = True,
) -> PrepareResult:
    """Tokenize text files into memory-mapped shards plus ``manifest.json`` under ``out``.

    Args:
        text: files and folders of text (each file is one document).
        out: output folder (created).
        tokenizer: ``bytes``, ``bpe:VOCAB``, a tokenizer folder or a ``.gguf`` file.
        val_fraction: share of files (by path hash) held out for validation, in (0, 1).
        workers: tokenizer processes (the output does not depend on it).
        suffixes: keep only files with these suffixes from folders (``(".py", ".txt")``).
        shard_tokens: tokens per shard file (a shard ends at a work-unit boundary past it).
        bpe_max_bytes: train the BPE on at most about this much train text (evenly spread).
        progress: show a progress bar / log lines.

    Returns:
        A :class:`PrepareResult` (``status`` says whether anything was done).
    """
    t0 = time.perf_counter()
    if isinstance(text, str | os.PathLike):
        text = [text]
    spec = check_prepare_args(
        text, tokenizer, out, val_fraction=val_fraction, workers=workers, shard_tokens=shard_tokens
    )
    root = check_writable_dir(out)  # proven writable before any long work
    files, skipped = collect_text_files(text, suffixes=suffixes, exclude=root)
    if not files:
        raise ValueError(f"no text files found in {[str(t) for t in text]} (skipped {skipped})")
    settings = {
        "tokenizer": str(spec),
        "tokenizer_identity": _tokenizer_identity(spec),
        "val_fraction": float(val_fraction),
        "suffixes": sorted(suffixes),
        "shard_tokens": shard_tokens,
        "bpe_max_bytes": bpe_max_bytes if spec.kind == "bpe" else None,
        "piece_bytes": corpus_files.PIECE_BYTES,
        "version": VERSION,
    }
    settings_hash = digest(settings)
    inputs_stat = stat_key(files)
    old = _existing_manifest(root)
    if old and old["settings_hash"] == settings_hash and old.get("inputs_stat") == inputs_stat:
        return PrepareResult(root, "up-to-date", old, time.perf_counter() - t0)
    inputs_hash = content_key(files)
    if old and old["settings_hash"] == settings_hash and old.get("inputs_hash") == inputs_hash:
        old["inputs_stat"] = inputs_stat  # touched but unchanged files: remember the new times
        write_json(root / MANIFEST, old)
        return PrepareResult(root, "up-to-date", old, time.perf_counter() - t0)

    key = digest([settings_hash, inputs_hash])
    units, rule = plan_units(files, val_fraction)
    tok_dir = root / TOKENIZER_DIR
    found = _resume_state(root, key)
    if found is None:
        tok = _make_tokenizer(spec, units, bpe_max_bytes)  # before cleaning: may live in `out`
        _clean(root)
        tmp = root / f".{TOKENIZER_DIR}.tmp"
        tok.save(tmp)
        os.replace(tmp, tok_dir)
        state: dict[str, Any] = {"key": key, "units_done": 0, "shards": {s: [] for s in SPLITS}}
        write_json(root / PROGRESS, state)
        status = "prepared"
    else:
        state, tok = found
        status = "resumed"
        log.info("resuming %s after %d of %d work units", root, state["units_done"], len(units))
    dtype = dtype_for_vocab(tok.vocab_size)
    _tokenize(root, units, state, tok, tok_dir, dtype, workers, shard_tokens, progress)

    manifest = _manifest(root, tok, dtype, settings, settings_hash, inputs_hash, inputs_stat)
    manifest.update(split_rule=rule, files=len(files), skipped_files=skipped)
    manifest["splits"] = _split_summaries(state["shards"])
    write_json(root / MANIFEST, manifest)
    (root / PROGRESS).unlink(missing_ok=True)
    return PrepareResult(root, status, manifest, time.perf_counter() - t0)


def _existing_manifest(root: Path) -> dict[str, Any] | None:
    """The folder's manifest if it is valid and its shards are all there, else None."""
    try:
        m = read_manifest(root)
        check_shards(root, m)
        return m
    except ShardError:
        return None


def _make_tokenizer(spec: TokenizerSpec, units: list[WorkUnit], bpe_max_bytes: int) -> Tokenizer:
    if spec.kind == "bytes":
        return BytesTokenizer()
    if spec.kind == "bpe":
        assert spec.vocab_size is not None
        tok = train_bpe(_bpe_texts(units, bpe_max_bytes), spec.vocab_size)
        if tok.vocab_size < spec.vocab_size:
            log.warning(
                "BPE stopped at %d tokens (asked %d): the corpus has no more pairs to merge",
                tok.vocab_size,
                spec.vocab_size,
            )
        return tok
    assert spec.path is not None
    return load_tokenizer(spec.path)


def _tokenize(
    root: Path,
    units: list[WorkUnit],
    state: dict[str, Any],
    tok: Tokenizer,
    tok_dir: Path,
    dtype: np.dtype,
    workers: int,
    shard_tokens: int,
    progress: bool,
) -> None:
    """Tokenize ``units[state["units_done"]:]`` into shards, saving progress after each shard."""
    writers = {s: _ShardWriter(root, s, dtype, shard_tokens, state["shards"][s]) for s in SPLITS}

    def save(done: int) -> None:
        state["units_done"] = done
        state["shards"] = {s: w.shards for s, w in writers.items()}
        write_json(root / PROGRESS, state)

    start = int(state["units_done"])
    todo = units[start:]
    total = sum(u.nbytes for u in todo)
    t0 = time.perf_counter()
    cur: str | None = None
    ctx = progress_bar(total, "tokenizing") if progress else contextlib.nullcontext()
    try:
        with _mapper(workers, tok, tok_dir, dtype) as run, ctx as bar:
            for i, (unit, (ids, starts, nbytes)) in enumerate(
                zip(todo, run(todo), strict=True), start
            ):
                if cur is not None and unit.split != cur:
                    writers[cur].close()
                    save(i)
                cur = unit.split
                if writers[cur].add(ids, starts, nbytes):
                    save(i + 1)
                if bar is not None:
                    mbps = (bar.completed + unit.nbytes) / 1e6 / (time.perf_counter() - t0)
                    bar.advance(unit.nbytes, MBps=mbps)
        for w in writers.values():
            w.close()
        save(len(units))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def _manifest(
    root: Path,
    tok: Tokenizer,
    dtype: np.dtype,
    settings: dict[str, Any],
    settings_hash: str,
    inputs_hash: str,
    stat_key: str,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "tokenizer": {
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "folder": TOKENIZER_DIR,
        },
        "inputs_hash": inputs_hash,
        "inputs_stat": stat_key,
        "settings_hash": settings_hash,
        "settings": settings,
    }


def _split_summaries(shards: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for split in SPLITS:
        sh = shards[split]
        tokens = sum(x["tokens"] for x in sh)
        nbytes = sum(x["bytes"] for x in sh)
        out[split] = {
            "tokens": tokens,
            "bytes": nbytes,
            "documents": sum(x["documents"] for x in sh),
            "bytes_per_token": nbytes / max(1, tokens),
            "shards": sh,
        }
    return out
