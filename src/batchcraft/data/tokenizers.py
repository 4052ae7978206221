"""Tokenizers for LM corpora: raw bytes, a BPE trained here, or one loaded from a folder or GGUF.

Every tokenizer follows one small protocol (:class:`Tokenizer`): ``encode(str) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``name``, ``eos_id`` (the end-of-document token written
after every document, or ``None``) and ``save(folder)``; :func:`load_tokenizer` reads a saved
folder back. Specs, as ``batchcraft data prepare --tokenizer`` takes them:

* ``bytes``: UTF-8 bytes, vocabulary 256, end of document 0 (the ids of
  :class:`batchcraft.data.text.ByteTokenizer`); no optional package.
* ``bpe:VOCAB``: a byte-level BPE trained on the corpus with the ``tokenizers`` package
  (:func:`train_bpe`), ``<|endoftext|>`` as id 0. On a small corpus the vocabulary may stop
  short of ``VOCAB`` (no pairs left to merge); the real size is recorded.
* a folder holding a Hugging Face ``tokenizer.json`` (the end-of-document token from
  ``tokenizer_config.json``'s ``eos_token`` when present), or a ``.gguf`` model file (its
  embedded tokenizer, read through ``transformers``).

A saved folder holds ``batchcraft_tokenizer.json`` (kind, name, vocab size, eos id) and, for
BPE and loaded tokenizers, ``tokenizer.json`` + ``tokenizer_config.json``, which
``transformers.AutoTokenizer.from_pretrained(folder)`` also reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from batchcraft.utils.io import write_json, write_text

__all__ = [
    "EOS_TOKEN",
    "BytesTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerSpec",
    "load_tokenizer",
    "parse_tokenizer_spec",
    "train_bpe",
]

EOS_TOKEN = "<|endoftext|>"
META_FILE = "batchcraft_tokenizer.json"
META_FORMAT = "batchcraft-tokenizer"
META_VERSION = 1
MIN_BPE_VOCAB = 257  # 256 byte symbols + the end-of-document token
_EOS_GUESSES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")

IdsLike = Sequence[int] | np.ndarray | Any  # also a torch tensor (converted with .tolist())


@runtime_checkable
class Tokenizer(Protocol):
    """What the corpus pipeline needs from a tokenizer."""

    name: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def decode(self, ids: IdsLike) -> str:
        """Text of ``ids``."""
        ...

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the tokenizer into ``folder``; :func:`load_tokenizer` reads it back."""
        ...


def _as_list(ids: IdsLike) -> list[int]:
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def _write_meta(folder: Path, kind: str, name: str, vocab_size: int, eos_id: int | None) -> None:
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "kind": kind,
        "name": name,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
    }
    write_json(folder / META_FILE, meta)


class BytesTokenizer:
    """UTF-8 bytes: ids in ``[0, 256)``, end of document 0 (NUL, stripped from the text).

    The same ids as :class:`batchcraft.data.text.ByteTokenizer`, returned as a list.
    """

    name = "bytes"
    vocab_size = 256
    eos_id: int | None = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: IdsLike) -> str:
        return bytes(i % 256 for i in _as_list(ids)).decode("utf-8", errors="replace")

    def save(self, folder: str | os.PathLike[str]) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        _write_meta(out, "bytes", self.name, self.vocab_size, self.eos_id)
        return out


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (BPE trained here, or loaded) behind the :class:`Tokenizer` API.

    Args:
        tok: the ``tokenizers.Tokenizer``.
        name: how it is shown and recorded (``"bpe:4096"``, ``"hf:my_tok"``, ``"gguf:x.gguf"``).
        eos_id: the end-of-document id, or ``None`` when the tokenizer has none.
    """

    def __init__(self, tok: Any, *, name: str, eos_id: int | None):
        self.tok, self.name, self.eos_id = tok, name, eos_id
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: IdsLike) -> str:
        return str(self.tok.decode(_as_list(ids), skip_special_tokens=False))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "tokenizer.json", self.tok.to_str())
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if self.eos_id is not None:
            config["eos_token"] = self.tok.id_to_token(self.eos_id)
        write_json(out / "tokenizer_config.json", config)
        _write_meta(out, "hf", self.name, self.vocab_size, self.eos_id)
        return out


def _tokenizers() -> Any:
    from batchcraft._capabilities import require

    return require("tokenizers", "BPE and Hugging Face tokenizers")


def train_bpe(texts: Iterable[str], vocab_size: int, *, name: str | None = None) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) with ``<|endoftext|>`` as id 0.

    Args:
        texts: the training documents.
        vocab_size: target vocabulary, >= 257 (256 bytes + the end-of-document token); a small
            corpus may stop short of it.
        name: recorded name; default ``"bpe:{vocab_size}"``.

    Returns:
        The trained :class:`HFTokenizer` (deterministic for the same texts).
    """
    if not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
        raise ValueError(
            f"BPE vocabulary must be an integer >= {MIN_BPE_VOCAB} (256 bytes + end of "
            f"document), got {vocab_size!r}"
        )
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, name=name or f"bpe:{vocab_size}", eos_id=tok.token_to_id(EOS_TOKEN))


def _eos_of(tok: Any, eos_token: object) -> int | None:
    """The id of ``eos_token`` (a string or HF's ``{"content": ...}``), else a common EOS name."""
    if isinstance(eos_token, dict):
        eos_token = eos_token.get("content")
    names = ([eos_token] if isinstance(eos_token, str) else []) + list(_EOS_GUESSES)
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return int(i)
    return None


def _load_hf_folder(folder: Path, name: str | None = None) -> HFTokenizer:
    tk = _tokenizers()
    try:
        tok = tk.Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:  # the Rust side raises plain Exception subclasses
        raise ValueError(
            f"{folder / 'tokenizer.json'} is not a valid tokenizer file: {exc}"
        ) from exc
    eos: object = None
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{cfg} is not a valid JSON object: {exc}") from exc
    return HFTokenizer(tok, name=name or f"hf:{folder.name}", eos_id=_eos_of(tok, eos))


def _load_gguf(path: Path) -> HFTokenizer:
    """The tokenizer embedded in a GGUF model file (through ``transformers``)."""
    from batchcraft._capabilities import require

    require("transformers", "reading the tokenizer of a GGUF file")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:  # tokenizer-only reader of recent transformers: needs no `gguf` package
        from transformers.integrations import gguf as hf_gguf

        reader: Any = hf_gguf.get_gguf_tokenizer, hf_gguf.convert_gguf_tokenizer
    except (ImportError, AttributeError):
        reader = None
    try:
        if reader is not None:
            arch, tok_dict, tok_cfg = reader[0](str(path))
            backend, _ = reader[1](arch, tok_dict)
            eos_token = tok_cfg.get("eos_token")
        else:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            backend, eos_token = hf.backend_tokenizer, hf.eos_token
    except ImportError as exc:
        raise ImportError(
            f"reading the tokenizer of {path} needs the gguf package: pip install gguf ({exc})"
        ) from exc
    except Exception as exc:
        raise ValueError(f"cannot read a tokenizer from the GGUF file {path}: {exc}") from exc
    return HFTokenizer(backend, name=f"gguf:{path.name}", eos_id=_eos_of(backend, eos_token))


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer from a folder saved by :meth:`Tokenizer.save`, a Hugging Face folder
    (``tokenizer.json``) or a ``.gguf`` file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return _load_gguf(p)
    meta_file = p / META_FILE
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            kind, name = meta["kind"], meta["name"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_file} is corrupt ({exc}); re-run data prepare") from exc
        if meta.get("format") != META_FORMAT or meta.get("version") != META_VERSION:
            raise ValueError(
                f"{meta_file} is format {meta.get('format')!r} version {meta.get('version')!r}; "
                f"this batchcraft reads {META_FORMAT!r} version {META_VERSION}"
            )
        if kind == "bytes":
            return BytesTokenizer()
        if kind == "hf":
            tok = _load_hf_folder(p, name)
            tok.eos_id = meta.get("eos_id")
            return tok
        raise ValueError(f"{meta_file} names an unknown tokenizer kind {kind!r}")
    if (p / "tokenizer.json").is_file():
        return _load_hf_folder(p)
    raise ValueError(
        f"no tokenizer at {str(p)!r}: expected a folder with tokenizer.json or "
        f"{META_FILE}, or a .gguf file"
    )


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed ``--tokenizer`` value: ``kind`` is ``bytes``, ``bpe``, ``folder`` or ``gguf``."""

    kind: str
    vocab_size: int | None = None  # bpe only
    path: Path | None = None  # folder / gguf only

    def __str__(self) -> str:
        if self.kind == "bpe":
            return f"bpe:{self.vocab_size}"
        return "bytes" if self.path is None else str(self.path)


def parse_tokenizer_spec(spec: str) -> TokenizerSpec:
    """Parse ``bytes``, ``bpe:VOCAB``, a tokenizer folder or a ``.gguf`` file (checked to exist)."""
    s = str(spec).strip()
    if s == "bytes":
        return TokenizerSpec("bytes")
    if s.startswith("bpe:"):
        v = s[4:]
        if not v.isdigit() or int(v) < MIN_BPE_VOCAB:
            raise ValueError(
                f"--tokenizer bpe:VOCAB needs an integer VOCAB >= {MIN_BPE_VOCAB} (256 bytes + "
                f"end of document), got {s!r}"
            )
        return TokenizerSpec("bpe", vocab_size=int(v))
    p = Path(s)
    if p.is_file() and p.suffix == ".gguf":
        return TokenizerSpec("gguf", path=p)
    if p.is_dir() and ((p / "tokenizer.json").is_file() or (p / META_FILE).is_file()):
        return TokenizerSpec("folder", path=p)
    raise ValueError(
        f"--tokenizer {s!r} is not 'bytes', 'bpe:VOCAB', a folder with tokenizer.json, "
        "or a .gguf file"
    )
