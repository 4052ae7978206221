"""Rotary position embedding (RoPE), rotate-half convention, positions given explicitly.

Positions are explicit so that streaming (a cache offset), packed documents (positions restart
at each ``cu_seqlens`` boundary) and decoding all use the same function.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = [
    "apply_rope",
    "check_cu_seqlens",
    "doc_ids_from_cu_seqlens",
    "positions_from_cu_seqlens",
    "rope_cos_sin",
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


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, positions: Tensor, *, theta: float = 1e6) -> Tensor:
    """Rotate ``x`` by its positions.

    Args:
        x: ``[B, T, H, D]``.
        positions: ``[T]`` (shared over the batch) or ``[B, T]``.
        theta: RoPE base.

    Returns:
        ``[B, T, H, D]``, same dtype as ``x`` (computed in float32 or higher).
    """
    if x.dim() != 4:
        raise ValueError(f"apply_rope expects x of shape [B, T, H, D], got {tuple(x.shape)}")
    if positions.shape[-1] != x.shape[1]:
        raise ValueError(f"positions cover {positions.shape[-1]} tokens but x has T = {x.shape[1]}")
    cdt = torch.promote_types(x.dtype, torch.float32)
    cos, sin = rope_cos_sin(positions, x.shape[-1], theta=theta, dtype=cdt)
    if cos.dim() == 2:  # [T, D] -> [1, T, 1, D]
        cos, sin = cos[None, :, None], sin[None, :, None]
    else:  # [B, T, D] -> [B, T, 1, D]
        cos, sin = cos[:, :, None], sin[:, :, None]
    xf = x.to(cdt)
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


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
