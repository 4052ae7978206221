"""Triton kernel for the fused Adan update: one pass over memory, fp32 maths in registers.

Imported lazily (only by :mod:`batchcraft.optim._adan_fused`). Per element it reads
theta, g, m, v, n, g_prev and writes theta, m, v, n, g_prev: 44 bytes per fp32 parameter, the
minimum traffic of Adan (24 read + 20 written). Runs on CUDA, or on CPU under
``TRITON_INTERPRET=1`` (tests, small sizes).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

__all__ = ["adan_triton_update"]

_BLOCK = 1024


@triton.jit
def _adan_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    n_ptr,
    prev_ptr,
    clip_ptr,
    numel,
    lr,
    beta1,
    beta2,
    beta3,
    step1,
    step2,
    inv_sqrt_bc3,
    eps,
    wd,
    FIRST: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    NO_PROX: tl.constexpr,
    HAS_WD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CLIP:
        g = g * tl.load(clip_ptr).to(tl.float32)
    if MAXIMIZE:
        g = -g
    if FIRST:
        d = tl.zeros_like(g)  # step 1 seeds g_prev = g, so d = 0
    else:
        d = g - tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    n = tl.load(n_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = m * beta1 + g * (1.0 - beta1)
    v = v * beta2 + d * (1.0 - beta2)
    u = d * beta2 + g
    n = n * beta3 + u * u * (1.0 - beta3)
    den = tl.sqrt(n) * inv_sqrt_bc3 + eps
    if HAS_WD and NO_PROX:
        p = p * (1.0 - lr * wd)
    p = p - step1 * (m / den) - step2 * (v / den)
    if HAS_WD and not NO_PROX:
        p = p / (1.0 + lr * wd)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(n_ptr + offs, n.to(n_ptr.dtype.element_ty), mask=mask)
    tl.store(prev_ptr + offs, g.to(prev_ptr.dtype.element_ty), mask=mask)


def adan_triton_update(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    n: Tensor,
    prev: Tensor,
    clip_coef: Tensor | None,
    *,
    first: bool,
    lr: float,
    beta1: float,
    beta2: float,
    beta3: float,
    bc1: float,
    bc2: float,
    bc3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
    maximize: bool,
) -> None:
    """Launch the kernel on one parameter; every tensor is contiguous with ``p.numel()`` elements.

    Args:
        p, g, m, v, n, prev: parameter, gradient and state, ``[*]``, contiguous.
        clip_coef: 0-d clip factor on ``p.device`` or ``None``.
        first: whether this is the parameter's first step (seeds ``prev``).
        bc1, bc2, bc3: bias corrections ``1 - beta_i^k``.
    """
    numel = p.numel()
    if numel == 0:
        return
    clip = clip_coef if clip_coef is not None else p  # dummy pointer when HAS_CLIP is False
    grid = (triton.cdiv(numel, _BLOCK),)
    _adan_kernel[grid](
        p,
        g,
        m,
        v,
        n,
        prev,
        clip,
        numel,
        lr,
        beta1,
        beta2,
        beta3,
        lr / bc1,
        lr * beta2 / bc2,
        1.0 / bc3**0.5,
        eps,
        weight_decay,
        FIRST=first,
        HAS_CLIP=clip_coef is not None,
        MAXIMIZE=maximize,
        NO_PROX=no_prox,
        HAS_WD=weight_decay != 0,
        BLOCK=_BLOCK,
    )
