"""Mixed-precision LaCT: fp32 fast weights and learning rates, bf16 matmuls (issue 11).

The op runs with every tensor in an fp32 container under ``torch.autocast(dtype=bf16)``:

* ``q, k, v`` arrive in bf16 and are widened to fp32 exactly (bf16 values are fp32 values);
* fast weights, the pre-norm accumulator, the row norms ``rho``, the momentum buffer and
  ``lr``/``beta`` stay fp32, so small per-chunk updates are never swallowed by bf16 rounding;
* every ``bmm`` (key/query pre-activations, the three inner-gradient products, the apply
  product) and every Newton-Schulz product runs in bf16 (autocast's lower-precision list),
  elementwise maths on the bf16 products promotes back to fp32 where it meets fp32 weights;
* the output is returned in the input dtype; the state stays fp32 (continue a stream with it).

Any implementation with the ``lact`` signature can be wrapped (:func:`mixed_precision`); the
chunk path's no-grad buffer loop uses ``out=`` variants that autocast does not see, so it is
skipped under autocast. Tolerances against the fp32 reference (relative RMS error, tested in
``tests/ops/lact/test_bf16.py``, table in docs/lact_op.md): without Muon output, gradients and
final weights <= 2e-2; with Muon and full-rank updates (C >= max(D, Dh)) output and weights
<= 5e-2, gradients <= 0.35 (beta's is the loosest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.chunk import chunk_lact
from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.state import FastWeights, LaCTState, map_weights

__all__ = ["LOW_PRECISION", "bf16_lact", "mixed_precision", "to_fp32_state"]

LOW_PRECISION: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)

LactFn = Callable[..., tuple[Tensor, LaCTState]]


def to_fp32_state(state: LaCTState | FastWeights) -> LaCTState | FastWeights:
    """The same state/weights with every floating tensor in fp32 (graph kept)."""
    if isinstance(state, FastWeights):
        return map_weights(lambda t: t.float(), state)
    if isinstance(state, LaCTState):
        return state.to(torch.float32)
    raise TypeError(f"state must be a LaCTState or FastWeights, got {type(state).__name__}")


def mixed_precision(fn: LactFn, *, mm_dtype: torch.dtype = torch.bfloat16) -> LactFn:
    """Wrap a ``lact``-signature implementation into the fp32-state / low-precision-matmul path.

    Args:
        fn: e.g. :func:`batchcraft.ops.lact.chunk_lact`.
        mm_dtype: matmul dtype, ``torch.bfloat16`` (default) or ``torch.float16``.

    Returns:
        A function with ``fn``'s signature: ``(o [B, T, H, D] in q's dtype, fp32 LaCTState)``.
    """
    if mm_dtype not in LOW_PRECISION:
        raise ValueError(f"mm_dtype must be torch.bfloat16 or torch.float16, got {mm_dtype}")

    def run(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        lr: Tensor,
        state: LaCTState | FastWeights,
        options: LaCTOptions | None = None,
        **kw: Any,
    ) -> tuple[Tensor, LaCTState]:
        for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        out_dtype = q.dtype
        beta = kw.pop("beta", None)
        with torch.autocast(device_type=q.device.type, dtype=mm_dtype):
            o, st = fn(
                q.float(),
                k.float(),
                v.float(),
                lr.float(),
                to_fp32_state(state),
                options,
                beta=None if beta is None else beta.float(),
                **kw,
            )
        return o.to(out_dtype), st

    run.__name__ = f"mixed_{getattr(fn, '__name__', 'lact')}"
    run.__doc__ = f"{getattr(fn, '__name__', 'lact')} with fp32 state and {mm_dtype} matmuls."
    return run


_BF16_CHUNK = mixed_precision(chunk_lact)


def bf16_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions | None = None,
    **kw: Any,
) -> tuple[Tensor, LaCTState]:
    """The chunk path with fp32 state and bf16 matmuls (what ``lact`` runs for bf16/fp16 inputs).

    Args:
        q: queries [B, T, H, D] (any float dtype; bf16 in the intended use).
        k: keys [B, T, H, D].
        v: values [B, T, H, D].
        lr: learning rates [B, T, H, 3] (kept in fp32).
        state: ``FastWeights`` or ``LaCTState`` in any float dtype (widened to fp32).
        options: the op options (or ``None`` and option keywords in ``kw``).
        **kw: ``schedule``, ``beta``, ``cu_seqlens`` and option keywords, as for
            :func:`batchcraft.ops.lact.lact`.

    Returns:
        ``(o [B, T, H, D] in q's dtype, state in fp32)``.
    """
    return _BF16_CHUNK(q, k, v, lr, state, options, **kw)
