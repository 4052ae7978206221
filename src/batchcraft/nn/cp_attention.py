"""Causal (sliding-window or full) attention when a sequence is spread over the ranks of a group.

Used by :class:`batchcraft.nn.lact.LaCTLayer` under chunk parallelism: rank ``r`` holds, for
every LaCT chunk of C tokens, the contiguous piece ``[j*C + r*C/P, j*C + (r+1)*C/P)``
(:func:`batchcraft.ops.lact.parallel.chunk_positions`). A piece's queries need the ``W - 1`` keys
before it, which (for ``W >= C``) lie on every rank, so the keys and values are all-gathered once
per layer (``2*T*d`` elements received per rank, differentiable: the backward pass
reduce-scatters their gradients) and each local piece attends to its window of the global
sequence with :func:`batchcraft.nn.attention.window_attention` (the same kernels as one process).
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchcraft.nn.attention import window_attention
from batchcraft.ops.lact.parallel import Group, all_gather_seq

__all__ = ["cp_window_attention"]


def _runs(pos: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive global positions: (local start, global start, length)."""
    runs: list[tuple[int, int, int]] = []
    for i, p in enumerate(pos):
        if runs and runs[-1][1] + runs[-1][2] == p:
            s, g, n = runs[-1]
            runs[-1] = (s, g, n + 1)
        else:
            runs.append((i, p, 1))
    return runs


def cp_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    all_positions: Tensor,
    *,
    window: int | None,
    group: Group | None,
    impl: str = "auto",
) -> Tensor:
    """Causal window attention of this rank's queries over the whole (gathered) sequence.

    Args:
        q: this rank's queries ``[B, T_local, H, D]`` (RoPE already applied at global positions).
        k: this rank's keys ``[B, T_local, H, D]``.
        v: this rank's values ``[B, T_local, H, D]``.
        positions: global position of each local token ``[T_local]``.
        all_positions: every rank's ``positions`` concatenated in rank order ``[P * T_local]``
            (a permutation of ``0 .. T - 1``).
        window: ``W`` (query ``t`` sees ``[t - W + 1, t]``) or ``None`` (full causal).
        group: the process group (every rank passes the same shapes).
        impl: attention implementation for :func:`window_attention`.

    Returns:
        ``[B, T_local, H, D]``.
    """
    order = torch.argsort(all_positions.to(k.device))  # gathered index of global position t
    kg = all_gather_seq(k, group).index_select(1, order)  # [B, T, H, D], global order
    vg = all_gather_seq(v, group).index_select(1, order)
    outs = []
    for start, p0, n in _runs(positions.tolist()):
        lo = 0 if window is None else max(0, p0 - window + 1)
        hi = p0 + n  # the run's queries are the last n of keys [lo, hi)
        outs.append(
            window_attention(
                q[:, start : start + n], kg[:, lo:hi], vg[:, lo:hi], window=window, impl=impl
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
