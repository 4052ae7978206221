"""LaCT: Large-Chunk Test-Time Training as a pure tensor op (spec ``lact.md`` §2-§6, §11).

The state is a per-head SwiGLU (or linear) network trained inside the forward pass: once per
chunk the fast weights take one descent step on an lr-weighted negative dot-product loss between
``f(k)`` and ``v``; queries read the state as ``f(q)``. Shapes: ``q, k, v`` [B, T, H, D],
``lr`` [B, T, H, 3] (gate, up, down), ``beta`` [B, T, H] or None; output ``o`` [B, T, H, D].

Example::

    W0 = FastWeights(gate, up, down)               # [H, Dh, D], [H, Dh, D], [H, D, Dh]
    o, state = lact(q, k, v, lr, W0, chunk_size=2048)
    o2, state = lact(q2, k2, v2, lr2, state, chunk_size=2048)   # continues the stream exactly
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from batchcraft.ops.lact.api import Schedule
from batchcraft.ops.lact.chunk import chunk_lact
from batchcraft.ops.lact.inner import lact_inner_grad, swiglu_apply
from batchcraft.ops.lact.muon import newton_schulz
from batchcraft.ops.lact.naive import naive_lact
from batchcraft.ops.lact.schedule import (
    TTTOp,
    bidirectional_schedule,
    causal_schedule,
    strided_schedule,
)
from batchcraft.ops.lact.state import FastWeights, LaCTState

__all__ = [
    "IMPLS",
    "FastWeights",
    "LaCTState",
    "TTTOp",
    "bidirectional_schedule",
    "causal_schedule",
    "chunk_lact",
    "lact",
    "lact_flops",
    "lact_inner_grad",
    "naive_lact",
    "newton_schulz",
    "resolve_impl",
    "strided_schedule",
    "swiglu_apply",
]

IMPLS: tuple[str, ...] = ("auto", "naive", "chunk", "bf16", "compiled", "triton")


def _triton_impl() -> Callable[..., tuple[Tensor, LaCTState]] | None:
    """``batchcraft.ops.lact.triton.triton_lact`` when that module exists and Triton imports."""
    from batchcraft._capabilities import has_triton

    if not has_triton():
        return None
    try:
        mod = importlib.import_module("batchcraft.ops.lact.triton")
    except ImportError:
        return None
    fn = getattr(mod, "triton_lact", None)
    return fn if callable(fn) else None


def resolve_impl(impl: str, q: Tensor) -> Callable[..., tuple[Tensor, LaCTState]]:
    """The implementation ``lact(..., impl=impl)`` runs.

    ``auto`` = Triton on CUDA when available; else ``bf16`` (fp32 state, bf16 matmuls) for
    bf16/fp16 inputs or under ``torch.autocast``; else ``chunk``. ``chunk`` runs in the input dtype as given; ``compiled``
    is the chunk path with a ``torch.compile``d chunk step (pays a one-off compile).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "naive":
        return naive_lact
    if impl == "chunk":
        return chunk_lact
    if impl == "bf16":
        from batchcraft.ops.lact.bf16 import bf16_lact

        return bf16_lact
    if impl == "compiled":
        from batchcraft.ops.lact.compiled import compiled_lact

        return compiled_lact
    tri = _triton_impl() if (impl == "triton" or q.is_cuda) else None
    if impl == "triton":
        if tri is None:
            raise ValueError(
                "impl='triton' needs Triton and batchcraft.ops.lact.triton; use impl='chunk'"
            )
        return tri
    if tri is not None:
        return tri
    if q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(q.device.type):
        from batchcraft.ops.lact.bf16 import bf16_lact

        return bf16_lact
    return chunk_lact


def lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    *,
    chunk_size: int,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    cu_seqlens: Tensor | Sequence[int] | None = None,
    impl: str = "auto",
    loss: str = "neg_dot",
    inner_steps: int = 1,
    check: bool = False,
    recompute: bool = False,
) -> tuple[Tensor, LaCTState]:
    """Large-chunk test-time training over a schedule of chunks.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, T, H, D].
        v: values [B, T, H, D].
        lr: per-token, per-matrix learning rates [B, T, H, 3], columns (gate, up, down); the linear
            variant uses the down column. Cast to q's dtype.
        state: initial ``FastWeights`` (gate/up [H or B,H, Dh, D], down [H or B,H, D, Dh]; per-head
            weights are expanded over B without a copy) or a ``LaCTState`` to continue a stream.
        chunk_size: C, tokens per update of the causal schedule.
        schedule: ``"causal"`` (apply then update per chunk; continues from a state),
            ``"bidirectional"`` (one update over all tokens, then apply to all), or an explicit
            list of :class:`TTTOp` (e.g. :func:`strided_schedule`).
        beta: momentum gates [B, T, H] in [0, 1]; momentum is on iff given.
        muon: ``None``, ``"tuned"`` or ``"classic"`` Newton-Schulz on every update.
        muon_steps: Newton-Schulz steps (``"tuned"``: at most 5).
        weight_norm: ``"post"``, ``"pre"`` or ``None`` (row renorm to the norms of ``W0``).
        fast_weight: ``"swiglu"`` or ``"linear"``.
        cu_seqlens: packed document boundaries [0, ..., T] (B = 1); the state resets per document
            and the returned state is that of the last document.
        impl: ``"auto"`` | ``"naive"`` | ``"chunk"`` | ``"bf16"`` | ``"compiled"`` | ``"triton"``
            (see :func:`resolve_impl`).
        loss: inner loss ``"neg_dot"`` (paper) or ``"mse"``.
        inner_steps: descent steps per update (experimental; 1 in the paper).
        check: also validate NaN/inf and the beta range (costs a device sync).
        recompute: per-chunk activation checkpointing in the fast path (bounds training memory).

    Returns:
        ``(o, state)``: o [B, T, H, D] (q's dtype) and the state after every complete chunk,
        holding the unfinished chunk's tokens as pending.
    """
    fn = resolve_impl(impl, q)
    return fn(
        q,
        k,
        v,
        lr,
        state,
        chunk_size=chunk_size,
        schedule=schedule,
        beta=beta,
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        fast_weight=fast_weight,
        cu_seqlens=cu_seqlens,
        loss=loss,
        inner_steps=inner_steps,
        check=check,
        recompute=recompute,
    )


def lact_flops(
    tokens: int, heads: int, D: int, Dh: int, *, muon: bool = False, chunk_size: int = 1
) -> float:
    """Forward FLOPs: ``18*D*Dh`` per token per head (§3), plus Newton-Schulz per update when ``muon``.

    Muon cost per update and head: 5 steps on gate, up ([Dh, D]) and down ([D, Dh]); each step on
    an [m, n] matrix (m <= n) costs ``4*m*m*n + 2*m**3`` (``A = X X^T``, ``A A``, ``(bA + cA A) X``).
    """
    flops = 18.0 * D * Dh * tokens * heads
    if muon:
        m, n = min(D, Dh), max(D, Dh)
        per_step = 4 * m * m * n + 2 * m**3
        flops += 3 * 5 * per_step * heads * (tokens // max(chunk_size, 1))
    return flops
