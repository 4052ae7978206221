"""Stream training windows from prepared token shards (memory-mapped, never loaded whole).

Example::

    shards = TokenShards("data/tok")                  # validates the manifest and shard sizes
    shards.check_vocab(model.config.vocab_size)       # the model must match the token ids
    train = shards.batches(8, 1024, seed=0, rank=rank, world_size=world)
    tokens, cu = train.get(step)                      # [8, 1025] int64, cu_seqlens [N + 1]
    x, y, cu = pack_batch(tokens, cu)                 # [1, 8 * 1024] inputs and targets
    logits = model(x, cu_seqlens=cu).logits           # state resets at every boundary in cu
    loss = F.cross_entropy(logits[0], y[0], ignore_index=-100)
    val_bpb = shards.bits_per_byte(val_loss_per_token)

**Order.** Each epoch cuts the split into ``n = (N - o) // T`` non-overlapping windows of
``T + 1`` tokens at a random offset ``o < T`` and visits them in a random permutation; both are
drawn from ``(seed, epoch)`` only, so batch ``i`` is a pure function of the seed and ``i``
(resume needs only the step). Global batch ``i`` is items ``[i B W, (i + 1) B W)`` of that
endless sequence; rank ``r`` of ``W`` takes rows ``[r B, (r + 1) B)``, so the ranks see disjoint
windows and together exactly the batch that one process with batch ``B W`` would see.

**Packing.** ``cu_seqlens`` (int32, flash-attention convention) gives the boundaries of the
``B T`` flattened inputs: every row start, and every document start inside a row. A batch with
``packed=False`` returns ``None`` instead.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from batchcraft.data.manifest import SPLITS, ShardError, check_shards, read_manifest
from batchcraft.data.tokenizers import Tokenizer, load_tokenizer

__all__ = ["ShardBatches", "SplitTokens", "TokenShards", "bits_per_byte", "pack_batch"]

Batch = tuple[Tensor, Tensor | None]


def bits_per_byte(loss_per_token: float, bytes_per_token: float) -> float:
    """Bits per byte of text from a mean cross-entropy in nats per token.

    ``bpb = loss / ln 2 / bytes_per_token``: comparable across tokenizers (a byte model has
    ``bytes_per_token = 1``).
    """
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    return float(loss_per_token) / math.log(2.0) / float(bytes_per_token)


def pack_batch(tokens: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten a batch of windows into the packed ``B = 1`` form the LaCT model takes.

    Args:
        tokens: ``[B, T + 1]`` windows (from :meth:`ShardBatches.get`).
        cu_seqlens: ``[N + 1]`` boundaries of the ``B T`` flattened inputs.

    Returns:
        ``inputs [1, B T]``, ``targets [1, B T]`` and ``cu_seqlens``. A target that would be
        predicted across a document start inside a row (the next document's first token, from
        the previous document's end) is ``-100`` (not scored); at a row start the target stays,
        since it is the true next token of the previous row's window.
    """
    b, t1 = tokens.shape
    t = t1 - 1
    inputs = tokens[:, :-1].reshape(1, b * t)  # [1, B T]
    targets = tokens[:, 1:].reshape(1, b * t).clone()  # [1, B T]
    inner = cu_seqlens[1:-1].long()
    inner = inner[inner % t != 0]  # document starts that are not row starts
    targets[0, inner - 1] = -100
    return inputs, targets, cu_seqlens


class SplitTokens:
    """One split as a single virtual ``[N]`` token array over its memory-mapped shards.

    Args:
        root: the prepared folder.
        split: the split's manifest entry.
        dtype: the shards' dtype.
    """

    def __init__(self, root: Path, split: dict[str, Any], dtype: np.dtype):
        self.root, self.dtype = root, dtype
        self.files = [root / s["file"] for s in split["shards"]]
        sizes = [int(s["tokens"]) for s in split["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # [S + 1]
        self._maps: dict[int, np.memmap] = {}
        starts = []
        for s, off in zip(split["shards"], self.offsets[:-1], strict=True):
            path = root / s["docs"]
            try:
                d = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ShardError(
                    f"document index {path} is corrupt ({exc}); re-run prepare"
                ) from exc
            ok = d.ndim == 1 and d.dtype.kind in "iu"
            if not ok or (d.size and (d.min() < 0 or d.max() >= s["tokens"])):
                raise ShardError(f"document index {path} does not fit its shard; re-run prepare")
            starts.append(d.astype(np.int64) + off)
        self.doc_starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)  # [Ndoc]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the memory maps (a pickled memmap would copy the whole shard)."""
        return {**self.__dict__, "_maps": {}}

    def _map(self, k: int) -> np.memmap:
        if k not in self._maps:
            self._maps[k] = np.memmap(self.files[k], dtype=self.dtype, mode="r")
        return self._maps[k]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` (a copy, possibly spanning shards): ``[length]``."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {len(self)})")
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        out, pos, end = [], start, start + length
        while pos < end:
            lo = pos - int(self.offsets[k])
            hi = min(end, int(self.offsets[k + 1])) - int(self.offsets[k])
            out.append(self._map(k)[lo:hi])
            pos += hi - lo
            k += 1
        return out[0].copy() if len(out) == 1 else np.concatenate(out)

    def boundaries(self, start: int, length: int) -> np.ndarray:
        """Offsets ``0 < b < length`` at which a document starts inside ``[start, start+length)``."""
        lo = np.searchsorted(self.doc_starts, start, side="right")
        hi = np.searchsorted(self.doc_starts, start + length, side="left")
        return self.doc_starts[lo:hi] - start


class TokenShards:
    """A prepared token-shard folder: manifest, tokenizer, splits and batch streams.

    Args:
        folder: the output of ``batchcraft data prepare``.
        verify: also check every shard's checksum (reads all shards once).

    Raises:
        ShardError: missing or corrupt manifest, missing or truncated shards, wrong version.
    """

    def __init__(self, folder: str | os.PathLike[str], *, verify: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        check_shards(self.folder, self.manifest, verify=verify)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size: int = self.manifest["tokenizer"]["vocab_size"]
        self.eos_id: int | None = self.manifest["tokenizer"].get("eos_id")
        self._splits: dict[str, SplitTokens] = {}

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the shards were made with (loaded on first use)."""
        tok = load_tokenizer(self.folder / self.manifest["tokenizer"]["folder"])
        if tok.vocab_size != self.vocab_size:
            raise ShardError(
                f"tokenizer in {self.folder} has vocabulary {tok.vocab_size}, the manifest "
                f"{self.vocab_size}; re-run data prepare"
            )
        return tok

    def split(self, name: str = "train") -> SplitTokens:
        """The ``train`` or ``val`` tokens."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        if name not in self._splits:
            self._splits[name] = SplitTokens(self.folder, self.manifest["splits"][name], self.dtype)
        return self._splits[name]

    def bytes_per_token(self, split: str = "val") -> float:
        """Mean UTF-8 text bytes per token of a split (end-of-document tokens included)."""
        s = self.manifest["splits"][split]
        return s["bytes"] / max(1, s["tokens"])

    def bits_per_byte(self, loss_per_token: float, split: str = "val") -> float:
        """Bits per byte of a mean loss (nats per token) measured on ``split``."""
        return bits_per_byte(loss_per_token, self.bytes_per_token(split))

    def check_vocab(self, vocab_size: int, *, allow_padding: bool = False) -> None:
        """Raise a one-line :class:`ShardError` unless a model with ``vocab_size`` fits the ids.

        Args:
            vocab_size: the model's embedding rows.
            allow_padding: accept a larger model vocabulary (rounded up for speed).
        """
        ok = vocab_size == self.vocab_size or (allow_padding and vocab_size > self.vocab_size)
        if not ok:
            raise ShardError(
                f"model vocabulary {vocab_size} does not match the token shards in "
                f"{self.folder} (vocabulary {self.vocab_size}, tokenizer "
                f"{self.manifest['tokenizer']['name']}): build the model with "
                f"vocab_size={self.vocab_size}"
            )

    def batches(
        self,
        batch_size: int,
        context: int,
        *,
        split: str = "train",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        packed: bool = True,
    ) -> ShardBatches:
        """A :class:`ShardBatches` stream of ``[batch_size, context + 1]`` windows of ``split``."""
        return ShardBatches(
            self.split(split),
            batch_size=batch_size,
            context=context,
            seed=seed,
            rank=rank,
            world_size=world_size,
            packed=packed,
            vocab_size=self.vocab_size,
        )

    def __repr__(self) -> str:
        s = self.manifest["splits"]
        return (
            f"TokenShards({str(self.folder)!r}, tokenizer={self.manifest['tokenizer']['name']}, "
            f"vocab={self.vocab_size}, train={s['train']['tokens']}, val={s['val']['tokens']})"
        )


def _seed_of(seed: int, epoch: int) -> int:
    h = hashlib.blake2b(f"batchcraft-shards:{seed}:{epoch}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


class ShardBatches:
    """Windows of ``context + 1`` tokens from a :class:`SplitTokens`, deterministic in the step.

    See the module docstring for the order and the ``cu_seqlens`` convention.
    """

    def __init__(
        self,
        tokens: SplitTokens,
        *,
        batch_size: int,
        context: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        packed: bool = True,
        vocab_size: int | None = None,
    ):
        if batch_size < 1 or context < 1:
            raise ValueError(f"batch_size and context must be >= 1, got {batch_size}, {context}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if len(tokens) < context + 1:
            raise ValueError(
                f"the split has {len(tokens)} tokens, fewer than context + 1 = {context + 1}"
            )
        self.tokens, self.batch_size, self.context = tokens, batch_size, context
        self.seed, self.rank, self.world_size, self.packed = seed, rank, world_size, packed
        self.vocab_size = vocab_size
        n = len(tokens)
        self.max_offset = min(context, n - context)  # offsets o in [0, max_offset)
        self.windows_per_epoch = (n - self.max_offset) // context
        self._epochs: dict[int, tuple[int, Tensor]] = {}

    def _epoch(self, e: int) -> tuple[int, Tensor]:
        if e not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            g = torch.Generator().manual_seed(_seed_of(self.seed, e))
            offset = int(torch.randint(0, self.max_offset, (1,), generator=g))
            self._epochs[e] = (offset, torch.randperm(self.windows_per_epoch, generator=g))
        return self._epochs[e]

    def window_starts(self, step: int) -> list[int]:
        """Token offsets of this rank's ``B`` windows of batch ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for j in range(first, first + self.batch_size):
            e, k = divmod(j, self.windows_per_epoch)
            offset, perm = self._epoch(e)
            out.append(offset + int(perm[k]) * self.context)
        return out

    def _assemble(self, starts: list[int]) -> Batch:
        t = self.context
        rows = np.stack([self.tokens.read(s, t + 1) for s in starts]).astype(np.int64)
        if self.vocab_size is not None and rows.size and int(rows.max()) >= self.vocab_size:
            raise ShardError(
                f"token id {int(rows.max())} >= vocabulary {self.vocab_size} in "
                f"{self.tokens.root}: corrupt shard; re-run data prepare"
            )
        cu = None
        if self.packed:
            bounds = [b * t + self.tokens.boundaries(s, t) for b, s in enumerate(starts)]
            row_starts = np.arange(len(starts) + 1, dtype=np.int64) * t
            cu_np = np.unique(np.concatenate([row_starts, *bounds]))
            cu = torch.from_numpy(cu_np.astype(np.int32))
        return torch.from_numpy(rows), cu

    def get(self, step: int) -> Batch:
        """Batch ``step``: tokens ``[B, T + 1]`` int64 and ``cu_seqlens [N + 1]`` int32 (or None)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self._assemble(self.window_starts(step))

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Endless stream of batches from ``start_step``."""
        step = start_step
        while True:
            yield self.get(step)
            step += 1

    def sequential(self, max_batches: int | None = None) -> Iterator[Batch]:
        """Non-overlapping windows from the split's start (evaluation), this rank's share.

        Window ``k`` covers tokens ``[k T, k T + T]``; rank ``r`` takes ``k = r, r + W, ...``;
        batches hold up to ``B`` windows (the last may hold fewer, and ranks may differ by one
        window).
        """
        n_win = (len(self.tokens) - 1) // self.context
        mine = list(range(self.rank, n_win, self.world_size))
        n_batches = math.ceil(len(mine) / self.batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for i in range(n_batches):
            ks = mine[i * self.batch_size : (i + 1) * self.batch_size]
            yield self._assemble([k * self.context for k in ks])
