"""Rotary position embedding (RoPE), rotate-half convention, positions given explicitly.

Positions are explicit so that streaming (a cache offset), packed documents (positions restart
at each ``cu_seqlens`` boundary) and decoding all use the same function.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "RopeTables",
    "apply_rope",
    "apply_rope_pair",
    "check_cu_seqlens",
    "doc_ids_from_cu_seqlens",
    "positions_from_cu_seqlens",
    "rope_cos_sin",
    "rope_tables",
    "table_cache",
]


def rope_cos_sin(
    positions: Tensor, head_dim: int, *, theta: float = 1e6, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables for ``positions``.

    Args:
        positions: integer positions, ``[T]`` or ``[B, T]``.
        head_dim: rotated dimension ``D`` (must be even).
        theta: RoPE base.
        dtype: dtype of the returned tables.

    Returns:
        ``cos, sin``: ``[..., T, D]`` each (frequencies repeated for both halves).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE head_dim ({head_dim}) must be even")
    inv = 1.0 / (
        theta
        ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    )
    ang = positions.to(torch.float64)[..., None] * inv  # [..., T, D/2]
    ang = torch.cat([ang, ang], dim=-1)  # [..., T, D]
    return ang.cos().to(dtype), ang.sin().to(dtype)


class RopeTables(NamedTuple):
    """Rotation tables of :func:`rope_tables`: ``cos`` and ``sin`` with its first half negated,
    ``[T, D]`` or ``[B, T, D]``, so that ``rope(x) = x * cos + swap_halves(x) * sin_signed``."""

    cos: Tensor
    sin_signed: Tensor


def _signed(cos: Tensor, sin: Tensor) -> RopeTables:
    h = sin.shape[-1] // 2
    return RopeTables(cos, torch.cat([-sin[..., :h], sin[..., h:]], dim=-1))


_CACHE_POSITIONS = 1 << 16  # range tables are cached up to this many positions (x head_dim)


@functools.lru_cache(maxsize=8)
def _prefix_tables(
    end: int, head_dim: int, theta: float, dtype: torch.dtype, device: torch.device, _mode: Any
) -> RopeTables:
    """Tables for positions ``[0, end)`` (``_mode``: autograd mode key, see :func:`rope_tables`)."""
    pos = torch.arange(end, device=device)
    return _signed(*rope_cos_sin(pos, head_dim, theta=theta, dtype=dtype))


_cache_on = [True]


@contextlib.contextmanager
def table_cache(enabled: bool) -> Iterator[None]:
    """Turn the process-wide cache of range tables on or off inside the block.

    Off, every call computes its own ``[T, D]`` tables, as a fake-tensor trace does: what the
    memory planner measures as activations (a cached table is shared, persistent memory).
    """
    prev, _cache_on[0] = _cache_on[0], enabled
    try:
        yield
    finally:
        _cache_on[0] = prev


def _tracing() -> bool:
    """Inside a fake-tensor / dispatch mode (the memory planner's traces, torch.compile): the
    process-wide cache must neither hand out nor keep tensors of such a mode."""
    return _get_current_dispatch_mode() is not None


def rope_tables(
    positions: Tensor | range,
    head_dim: int,
    *,
    theta: float = 1e6,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RopeTables:
    """Rotation tables for ``positions``, computed once and shared by every rotation that uses them.

    A ``range`` of positions (``range(pos0, pos0 + T)``, the usual case: no packing) reads a
    cached table of positions ``[0, 2^k)`` (no recomputation across layers, steps and decoded
    tokens; at most ``65536`` positions are cached per head size, longer ranges are computed).
    Values equal :func:`rope_cos_sin` exactly.

    Args:
        positions: integer positions ``[T]`` or ``[B, T]``, or a ``range``.
        head_dim: rotated dimension ``D`` (even).
        theta: RoPE base.
        dtype: table dtype (the dtype the rotation computes in).
        device: device of the tables for a ``range`` (default CPU).

    Returns:
        :class:`RopeTables` with ``[T, D]`` (or ``[B, T, D]``) tables.
    """
    if isinstance(positions, Tensor):
        return _signed(*rope_cos_sin(positions, head_dim, theta=theta, dtype=dtype))
    if positions.step != 1 or positions.start < 0:
        raise ValueError(
            f"positions must be a range(start >= 0, stop) with step 1, got {positions}"
        )
    dev = torch.device("cpu") if device is None else torch.device(device)
    end = positions.stop
    if end > _CACHE_POSITIONS or head_dim % 2 or not _cache_on[0] or _tracing():
        pos = torch.arange(positions.start, end, device=dev)
        return _signed(*rope_cos_sin(pos, head_dim, theta=theta, dtype=dtype))
    size = max(1024, 1 << (max(end, 1) - 1).bit_length())  # next power of two >= end
    # inference tensors must not be saved for backward later: separate entries per mode
    mode = torch.is_inference_mode_enabled()
    tab = _prefix_tables(min(size, _CACHE_POSITIONS), head_dim, float(theta), dtype, dev, mode)
    return RopeTables(tab.cos[positions.start : end], tab.sin_signed[positions.start : end])


def _swap_halves(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat([x[..., h:], x[..., :h]], dim=-1)


class _Rotate(torch.autograd.Function):
    """``y = x * cos + swap(x) * sin_signed`` (the rotate-half RoPE). Its Jacobian is the rotation
    by the opposite angles, so the backward needs only the tables (x is not saved)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin_signed)
        return torch.addcmul(x * cos, _swap_halves(x), sin_signed)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin_signed = ctx.saved_tensors
        return torch.addcmul(g * cos, _swap_halves(g), sin_signed, value=-1), None, None


class _RotatePair(torch.autograd.Function):
    """:class:`_Rotate` on queries and keys at once: ``[B, T, 2, H, D]`` in (any strides), two
    ``[B, T, H, D]`` views of one contiguous buffer out; one input gradient. Outputs and
    gradients are written in their natural layout (kernels on permuted outputs are slow)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin_signed: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.save_for_backward(cos, sin_signed)
        c, s = cos.unsqueeze(-2), sin_signed.unsqueeze(-2)  # [B or 1, T, 1, 1, D]
        out = torch.mul(x, c).addcmul_(_swap_halves(x), s)  # [B, T, 2, H, D]
        return out[:, :, 0], out[:, :, 1]

    @staticmethod
    def backward(ctx: Any, gq: Tensor | None, gk: Tensor | None) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin_signed = ctx.saved_tensors
        like = gq if gq is not None else gk
        assert like is not None
        g = like.new_empty(like.shape[0], like.shape[1], 2, *like.shape[2:])  # [B, T, 2, H, D]
        for i, gi in enumerate((gq, gk)):
            if gi is None:
                g[:, :, i].zero_()
            else:
                g[:, :, i].copy_(gi)
        c, s = cos.unsqueeze(-2), sin_signed.unsqueeze(-2)
        sw = _swap_halves(g)
        return g.mul_(c).addcmul_(sw, s, value=-1), None, None


def _fit_tables(tables: RopeTables, x: Tensor, cdt: torch.dtype, lead: int) -> RopeTables:
    """Tables [T, D] / [B, T, D] broadcast to x [B, T, <lead dims>, D], in the compute dtype."""
    cos, sin = tables
    if cos.shape[-1] != x.shape[-1] or cos.shape[-2] != x.shape[1]:
        raise ValueError(
            f"rope tables {tuple(cos.shape)} do not fit x {tuple(x.shape)} ([.., T, D] expected)"
        )
    if cos.dim() == 2:  # [T, D] -> [1, T, D]
        cos, sin = cos[None], sin[None]
    shape = (cos.shape[0], cos.shape[1], *([1] * lead), cos.shape[2])
    return RopeTables(cos.to(cdt).view(shape), sin.to(cdt).view(shape))


def apply_rope_pair(
    qk: Tensor, positions: Tensor | range, *, theta: float = 1e6, tables: RopeTables | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`apply_rope` on queries and keys stacked as ``qk: [B, T, 2, H, D]`` (e.g. a view of
    a fused projection); returns ``(q, k)``, ``[B, T, H, D]`` each, in ``qk``'s dtype."""
    if qk.dim() != 5 or qk.shape[2] != 2:
        raise ValueError(f"apply_rope_pair expects qk [B, T, 2, H, D], got {tuple(qk.shape)}")
    n_pos = len(positions) if isinstance(positions, range) else positions.shape[-1]
    if n_pos != qk.shape[1]:
        raise ValueError(f"positions cover {n_pos} tokens but qk has T = {qk.shape[1]}")
    cdt = torch.promote_types(qk.dtype, torch.float32)
    if tables is None:
        tables = rope_tables(positions, qk.shape[-1], theta=theta, dtype=cdt, device=qk.device)
    cos, sin = _fit_tables(tables, qk, cdt, 1)
    q, k = _RotatePair.apply(qk.to(cdt), cos, sin)
    return q.to(qk.dtype), k.to(qk.dtype)


def apply_rope(
    x: Tensor,
    positions: Tensor | range,
    *,
    theta: float = 1e6,
    tables: RopeTables | None = None,
) -> Tensor:
    """Rotate ``x`` by its positions.

    Args:
        x: ``[B, T, H, D]``.
        positions: ``[T]`` (shared over the batch) or ``[B, T]``, or a ``range`` of positions.
        theta: RoPE base.
        tables: precomputed :func:`rope_tables` for these positions (then ``positions`` and
            ``theta`` only check the length); share them between the rotations of one forward.

    Returns:
        ``[B, T, H, D]``, same dtype as ``x`` (computed in float32 or higher).
    """
    if x.dim() != 4:
        raise ValueError(f"apply_rope expects x of shape [B, T, H, D], got {tuple(x.shape)}")
    n_pos = len(positions) if isinstance(positions, range) else positions.shape[-1]
    if n_pos != x.shape[1]:
        raise ValueError(f"positions cover {n_pos} tokens but x has T = {x.shape[1]}")
    cdt = torch.promote_types(x.dtype, torch.float32)
    if tables is None:
        tables = rope_tables(positions, x.shape[-1], theta=theta, dtype=cdt, device=x.device)
    cos, sin = _fit_tables(tables, x, cdt, 1)  # [B or 1, T, 1, D]
    out: Tensor = _Rotate.apply(x.to(cdt), cos, sin)
    return out.to(x.dtype)


def positions_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Positions that restart at 0 at every document start.

    Args:
        cu_seqlens: ``[N + 1]`` cumulative document lengths, starting at 0 and ending at ``total``.
        total: packed length ``T``.

    Returns:
        ``[T]`` int64 positions.
    """
    cu = cu_seqlens.to(torch.long)
    pos = torch.arange(total, device=cu.device)
    starts = torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])  # [T]
    return pos - starts


def doc_ids_from_cu_seqlens(cu_seqlens: Tensor, total: int) -> Tensor:
    """Document index of every packed token: ``[T]`` int64."""
    cu = cu_seqlens.to(torch.long)
    return torch.repeat_interleave(torch.arange(cu.numel() - 1, device=cu.device), cu[1:] - cu[:-1])


def check_cu_seqlens(cu_seqlens: Tensor, batch: int, total: int) -> None:
    """Validate packed-document boundaries (``B == 1``, starts at 0, ends at T, increasing)."""
    if batch != 1:
        raise ValueError(f"cu_seqlens requires a packed batch of size 1, got B = {batch}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-D tensor [N + 1] with N >= 1 documents")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at T = {total}, got {cu}")
    if any(b <= a for a, b in itertools.pairwise(cu)):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cu}")
