"""One fast-weight update given the raw descent direction.

Shared by the fast paths (the reference writes its own; the rule is layout-agnostic: elementwise maths, row
norms over the last axis, Newton-Schulz over the last two axes)::

    if momentum:  M <- Delta + mu * M ;  Delta <- M          (heavy ball, no (1 - mu) damping)
    if muon:      Delta <- NS(Delta) per matrix               (M keeps the pre-Muon accumulator)
    post-norm:    W <- renorm(W + Delta)
    pre-norm:     A <- A + Delta ; W <- renorm(A)
    no norm:      W <- W + Delta
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from batchcraft.ops.lact.muon import newton_schulz
from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.state import renorm

__all__ = ["update_rule"]


def _ns(x: Tensor, stacked: int, cfg: LaCTOptions) -> Tensor:
    """NS on each of ``stacked`` matrices concatenated along dim -2 of ``x``."""
    if stacked == 1:
        return newton_schulz(x, schedule=cfg.muon, steps=cfg.muon_steps)
    y = x.unflatten(-2, (stacked, -1))  # [..., s, m, n]
    return newton_schulz(y, schedule=cfg.muon, steps=cfg.muon_steps).flatten(-3, -2)


def update_rule(
    weights: Sequence[Tensor],
    delta: Sequence[Tensor],
    *,
    accum: Sequence[Tensor] | None,
    rho: Sequence[Tensor] | None,
    momentum: Sequence[Tensor] | None,
    mu: Tensor | None,
    cfg: LaCTOptions,
    stacked: Sequence[int] | None = None,
) -> tuple[list[Tensor], list[Tensor] | None, list[Tensor] | None]:
    """Apply §4 to a list of matrices.

    Args:
        weights: current weights used by apply, one tensor per matrix.
        delta: ``-grad L`` for each matrix (same shapes).
        accum: pre-norm accumulators or ``None``.
        rho: reference row norms [..., rows, 1] or ``None`` (needed for any weight norm).
        momentum: momentum buffers or ``None`` (momentum off).
        mu: chunk-mean beta broadcastable to the weights (e.g. [N, 1, 1]); needed with momentum.
        cfg: the op options (``use_muon``, ``muon``, ``muon_steps``, ``weight_norm`` are read).
        stacked: per matrix, how many matrices are concatenated along dim -2 (for per-matrix NS).

    Returns:
        ``(weights, accum, momentum)`` after the update.
    """
    stacked = stacked or [1] * len(weights)
    new_m: list[Tensor] | None = None
    d = list(delta)
    if momentum is not None:
        assert mu is not None
        new_m = [di + mu * mi for di, mi in zip(d, momentum, strict=True)]
        d = new_m
    if cfg.use_muon:
        d = [_ns(di, s, cfg) for di, s in zip(d, stacked, strict=True)]
    new_a: list[Tensor] | None = None
    if cfg.weight_norm == "post":
        assert rho is not None
        new_w = [renorm(w + di, r) for w, di, r in zip(weights, d, rho, strict=True)]
    elif cfg.weight_norm == "pre":
        assert rho is not None and accum is not None
        new_a = [a + di for a, di in zip(accum, d, strict=True)]
        new_w = [renorm(a, r) for a, r in zip(new_a, rho, strict=True)]
    else:
        new_w = [w + di for w, di in zip(weights, d, strict=True)]
    return new_w, new_a, new_m
