"""LaCT: Large-Chunk Test-Time Training as a pure tensor op (maths: docs/lact_op.md).

The state is a per-head SwiGLU (or linear) network trained inside the forward pass: once per
chunk the fast weights take one descent step on an lr-weighted negative dot-product loss between
``f(k)`` and ``v``; queries read the state as ``f(q)``. Shapes: ``q, k, v`` [B, T, H, D],
``lr`` [B, T, H, 3] (gate, up, down), ``beta`` [B, T, H] or None; output ``o`` [B, T, H, D].

How the fast weights learn is one frozen :class:`LaCTOptions`, shared by every implementation;
the keyword form builds it for you.

Example::

    W0 = FastWeights(gate, up, down)               # [H, Dh, D], [H, Dh, D], [H, D, Dh]
    opts = LaCTOptions(chunk_size=2048, use_muon=True)
    o, state = lact(q, k, v, lr, W0, opts)
    o2, state = lact(q2, k2, v2, lr2, state, opts)   # continues the stream exactly
    o, state = lact(q, k, v, lr, W0, chunk_size=2048, muon="tuned")   # keyword form
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from batchcraft.ops.lact.chunk import chunk_lact
from batchcraft.ops.lact.inner import lact_inner_grad, swiglu_apply
from batchcraft.ops.lact.muon import newton_schulz
from batchcraft.ops.lact.naive import naive_lact
from batchcraft.ops.lact.options import IMPLS, LaCTOptions, resolve_options
from batchcraft.ops.lact.schedule import (
    Schedule,
    TTTOp,
    bidirectional_schedule,
    causal_schedule,
    strided_schedule,
)
from batchcraft.ops.lact.state import FastWeights, LaCTState

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "IMPLS",
    "FastWeights",
    "LaCTOptions",
    "LaCTState",
    "Schedule",
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
        raise ValueError(f"lact_impl must be one of {IMPLS}, got {impl!r}")
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
    options: LaCTOptions | None = None,
    *,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
    group: ProcessGroup | None = None,
    **kw: Any,
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
        options: how the fast weights learn (:class:`LaCTOptions`: ``chunk_size``,
            ``use_momentum``, ``use_muon``/``muon``/``muon_steps``, ``weight_norm``,
            ``fast_weight``, ``inner_loss``, ``inner_steps``, ``check``, ``recompute``,
            ``lact_impl``). ``None``: built from ``kw``.
        schedule: ``"causal"`` (apply then update per chunk; continues from a state),
            ``"bidirectional"`` (one update over all tokens, then apply to all), or an explicit
            list of :class:`TTTOp` (e.g. :func:`strided_schedule`).
        beta: momentum gates [B, T, H] in [0, 1]; required iff ``options.use_momentum``.
        cu_seqlens: packed document boundaries [0, ..., T] (B = 1); the state resets per document
            and the returned state is that of the last document.
        group: a ``torch.distributed`` process group for chunk parallelism: this rank passes
            its share of every update's tokens and one all-reduce per update sums the inner
            gradients (:mod:`batchcraft.ops.lact.parallel`; causal: ``chunk_size`` is the global
            C, each rank holds ``C / P`` tokens of every chunk). ``None``: one process.
        **kw: option fields overriding ``options`` (or building it), plus the historical
            spellings ``impl`` (``lact_impl``), ``loss`` (``inner_loss``) and
            ``muon=None | "tuned" | "classic"``; without ``use_momentum`` the keyword form turns
            momentum on exactly when ``beta`` is given.

    Returns:
        ``(o, state)``: o [B, T, H, D] (q's dtype) and the state after every complete chunk,
        holding the unfinished chunk's tokens as pending.
    """
    opts = resolve_options(options, kw, beta_given=beta is not None)
    if group is not None:
        from batchcraft.ops.lact.parallel import parallel_lact

        return parallel_lact(
            q, k, v, lr, state, opts, group=group, schedule=schedule, beta=beta,
            cu_seqlens=cu_seqlens,
        )  # fmt: skip
    fn = resolve_impl(opts.lact_impl, q)
    return fn(q, k, v, lr, state, opts, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens)


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
