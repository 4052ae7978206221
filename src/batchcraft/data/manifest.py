"""The on-disk format of a tokenized corpus, and its validation (one-line errors).

A prepared folder (``batchcraft data prepare``) holds::

    manifest.json              written last and atomically: the folder is complete iff it exists
    tokenizer/                 the tokenizer (batchcraft.data.tokenizers.load_tokenizer reads it)
    train-00000.bin ...        token ids, raw little-endian uint16 (vocab <= 65536) or uint32
    train-00000.docs.npy ...   int64 offsets (inside that shard) where a document starts
    val-00000.bin ...          the same for the validation split

``manifest.json`` (format ``batchcraft-token-shards``, version 1)::

    {"format", "version", "dtype", "tokenizer": {"name", "vocab_size", "eos_id", "folder"},
     "inputs_hash", "settings_hash", "settings": {...}, "split_rule": "by-file" | "within-file",
     "files": n, "skipped_files": n,
     "splits": {"train": {"tokens", "bytes", "documents", "bytes_per_token",
                          "shards": [{"file", "docs", "tokens", "documents", "blake2b"}]},
                "val": {...}}}

``bytes`` counts the text's UTF-8 bytes (NUL bytes removed); ``tokens`` includes one
end-of-document token per document when the tokenizer has one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "ShardError",
    "check_shards",
    "dtype_for_vocab",
    "read_manifest",
]

FORMAT = "batchcraft-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


class ShardError(ValueError):
    """A prepared corpus folder is missing, corrupt or does not match what uses it."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab <= 65536), else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def file_hash(path: str | os.PathLike[str], block: int = 1 << 23) -> str:
    """BLAKE2b-128 of a file's bytes, read in blocks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ShardError(f"{path} is corrupt: {what}; re-run `batchcraft data prepare`")


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and structurally check ``folder/manifest.json``.

    Raises:
        ShardError: missing, not JSON, another format or version, or missing fields.
    """
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise ShardError(f"token shard folder {str(folder)!r} does not exist")
    if not path.is_file():
        raise ShardError(
            f"{path} not found: prepare the corpus first with `batchcraft data prepare` "
            "(an interrupted run leaves no manifest)"
        )
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); re-run data prepare") from exc
    _need(isinstance(m, dict), path, "not a JSON object")
    if m.get("format") != FORMAT:
        raise ShardError(f"{path} is not a batchcraft token-shard manifest (format {FORMAT!r})")
    if m.get("version") != VERSION:
        raise ShardError(
            f"{path} has format version {m.get('version')!r}; this batchcraft reads version "
            f"{VERSION}: re-run `batchcraft data prepare` with this version"
        )
    tok = m.get("tokenizer")
    _need(isinstance(tok, dict) and isinstance(tok.get("vocab_size"), int), path, "no tokenizer")
    _need(m.get("dtype") == dtype_for_vocab(tok["vocab_size"]).name, path, "dtype != vocab's")
    splits = m.get("splits")
    _need(isinstance(splits, dict) and set(SPLITS) <= set(splits), path, "train/val missing")
    for name in SPLITS:
        s = splits[name]
        ok = isinstance(s, dict) and isinstance(s.get("shards"), list)
        _need(ok and all(isinstance(s.get(k), int) for k in ("tokens", "bytes")), path, name)
        ok = all(isinstance(x, dict) and {"file", "docs", "tokens"} <= set(x) for x in s["shards"])
        _need(ok, path, f"bad shard entries in {name}")
        _need(sum(x["tokens"] for x in s["shards"]) == s["tokens"], path, f"{name} token count")
    return m


def check_shards(
    folder: str | os.PathLike[str], manifest: dict[str, Any], verify: bool = False
) -> None:
    """Check every shard the manifest lists: present, the right size, and (``verify``) hash.

    Raises:
        ShardError: naming the first bad file and what is wrong with it.
    """
    root = Path(folder)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    for split in SPLITS:
        for sh in manifest["splits"][split]["shards"]:
            p = root / sh["file"]
            if not p.is_file():
                raise ShardError(
                    f"shard {p} listed in {root / MANIFEST} is missing; re-run data prepare"
                )
            size, want = p.stat().st_size, sh["tokens"] * itemsize
            if size != want:
                raise ShardError(
                    f"shard {p} has {size} bytes but the manifest says {sh['tokens']} "
                    f"{manifest['dtype']} tokens ({want} bytes): truncated or from another "
                    "run; re-run data prepare"
                )
            if not (root / sh["docs"]).is_file():
                raise ShardError(f"document index {root / sh['docs']} is missing; re-run prepare")
            if verify and sh.get("blake2b") and file_hash(p) != sh["blake2b"]:
                raise ShardError(f"shard {p} does not match its checksum: corrupt; re-run prepare")
