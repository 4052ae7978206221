"""Triton kernels of the LaCT chunk step (imported lazily; never by ``import batchcraft``).

Layout: heads folded into the batch, ``x: [N, S, D]`` with unit column stride, row stride D and
batch stride ``sx`` (so a chunk ``x[:, s:e]`` of a longer [N, L, D] tensor is passed without a
copy); weights contiguous ``gate, up: [N, Dh, D]``, ``down: [N, D, Dh]``, fp32.

* :func:`swiglu_apply` — ``o = (silu(X Wg^T) * (X Wu^T)) Wd^T`` in one kernel, the [S, Dh]
  hidden activations never leave registers (loop over Dh blocks).
* :func:`inner_grad` — the three inner-gradient products of the closed-form update with the lr row scalings
  as epilogues of the elementwise tile maths, one kernel per (n, Dh block), loop over S.
* :func:`fused_update` — heavy-ball momentum + add + row renormalisation in one pass over
  each row (post-norm, pre-norm or no norm); Muon's Newton-Schulz stays in PyTorch.

``mm_bf16=True`` rounds the dot operands to bf16 (fp32 accumulation), which is what the GPU
bf16 path computes. Triton's CPU interpreter (``TRITON_INTERPRET=1``) mis-evaluates ``tl.dot``
on bf16 operands (triton 3.9: garbage values), so under the interpreter the bf16-rounded tiles
are widened back to fp32 before the dot: the same numbers, an fp32 product.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["fused_update", "inner_grad", "swiglu_apply"]

NORM_EPS = 1e-5


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _block(n: int, cap: int) -> int:
    """Power-of-two tile >= 16 (``tl.dot``'s minimum) covering ``n``, at most ``cap`` (when n > cap)."""
    return max(16, min(triton.next_power_of_2(n), cap))


@triton.jit
def _dot(a, b, MM_BF16: tl.constexpr, EMU: tl.constexpr):
    if MM_BF16:
        a16 = a.to(tl.bfloat16)
        b16 = b.to(tl.bfloat16)
        if EMU:
            out = tl.dot(a16.to(tl.float32), b16.to(tl.float32), input_precision="ieee")
        else:
            out = tl.dot(a16, b16)
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def _swiglu_apply_kernel(
    X, WG, WU, WD, O,
    S, D, DH, sx, so,
    BM: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr,
    MM_BF16: tl.constexpr, EMU: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, BD)
    rmask = rows < S
    cmask = cols < D
    x = tl.load(
        X + n * sx + rows[:, None] * D + cols[None, :],
        mask=rmask[:, None] & cmask[None, :],
        other=0.0,
    ).to(tl.float32)  # [BM, BD]
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    wbase = n * DH * D
    for h0 in range(0, DH, BH):
        hs = h0 + tl.arange(0, BH)
        hmask = hs < DH
        m2 = cmask[:, None] & hmask[None, :]
        wgt = tl.load(WG + wbase + hs[None, :] * D + cols[:, None], mask=m2, other=0.0)  # [BD, BH]
        wut = tl.load(WU + wbase + hs[None, :] * D + cols[:, None], mask=m2, other=0.0)
        zg = _dot(x, wgt, MM_BF16, EMU)  # [BM, BH]
        zu = _dot(x, wut, MM_BF16, EMU)
        h = zg * tl.sigmoid(zg) * zu
        wdt = tl.load(
            WD + wbase + cols[None, :] * DH + hs[:, None],
            mask=hmask[:, None] & cmask[None, :],
            other=0.0,
        )  # [BH, BD] = Wd^T block
        acc += _dot(h, wdt, MM_BF16, EMU)
    tl.store(
        O + n * so + rows[:, None] * D + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :]
    )


@triton.jit
def _inner_grad_kernel(
    K, V, LR, WG, WU, WD, DG, DU, DD,
    S, D, DH, sx, slr,
    BS: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr,
    MM_BF16: tl.constexpr, EMU: tl.constexpr,
):  # fmt: skip
    pid_h = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    hs = pid_h * BH + tl.arange(0, BH)
    cols = tl.arange(0, BD)
    hmask = hs < DH
    cmask = cols < D
    wbase = n * DH * D
    m_dh = cmask[:, None] & hmask[None, :]  # [BD, BH]
    wgt = tl.load(WG + wbase + hs[None, :] * D + cols[:, None], mask=m_dh, other=0.0)  # Wg^T
    wut = tl.load(WU + wbase + hs[None, :] * D + cols[:, None], mask=m_dh, other=0.0)
    wdb = tl.load(WD + wbase + cols[:, None] * DH + hs[None, :], mask=m_dh, other=0.0)  # Wd[:, hs]
    dd = tl.zeros([BD, BH], dtype=tl.float32)
    du = tl.zeros([BH, BD], dtype=tl.float32)
    dg = tl.zeros([BH, BD], dtype=tl.float32)
    for s0 in range(0, S, BS):
        rs = s0 + tl.arange(0, BS)
        rmask = rs < S
        m_sd = rmask[:, None] & cmask[None, :]
        kt = tl.load(K + n * sx + rs[:, None] * D + cols[None, :], mask=m_sd, other=0.0)
        vt = tl.load(V + n * sx + rs[:, None] * D + cols[None, :], mask=m_sd, other=0.0)
        lg = tl.load(LR + n * slr + rs * 3 + 0, mask=rmask, other=0.0)
        lu = tl.load(LR + n * slr + rs * 3 + 1, mask=rmask, other=0.0)
        ld = tl.load(LR + n * slr + rs * 3 + 2, mask=rmask, other=0.0)
        zg = _dot(kt, wgt, MM_BF16, EMU)  # [BS, BH]
        zu = _dot(kt, wut, MM_BF16, EMU)
        g = _dot(vt, wdb, MM_BF16, EMU)  # G = V Wd
        sg = tl.sigmoid(zg)
        a = zg * sg
        # lr epilogues: each row scaling folded into the elementwise tile before its product
        hk = a * zu * ld[:, None]
        pu = g * a * lu[:, None]
        pg = g * zu * sg * (1.0 + zg * (1.0 - sg)) * lg[:, None]
        dd += _dot(tl.trans(vt), hk, MM_BF16, EMU)  # [BD, BH]
        du += _dot(tl.trans(pu), kt, MM_BF16, EMU)  # [BH, BD]
        dg += _dot(tl.trans(pg), kt, MM_BF16, EMU)
    m_hd = hmask[:, None] & cmask[None, :]
    tl.store(DD + wbase + cols[:, None] * DH + hs[None, :], dd, mask=m_dh)
    tl.store(DU + wbase + hs[:, None] * D + cols[None, :], du, mask=m_hd)
    tl.store(DG + wbase + hs[:, None] * D + cols[None, :], dg, mask=m_hd)


@triton.jit
def _update_kernel(
    W, DL, M, MU, RHO, OUT_X, OUT_W, OUT_M,
    R, ROWS, COLS, eps,
    BR: tl.constexpr, BC: tl.constexpr,
    HAS_MOM: tl.constexpr, NORM: tl.constexpr, STORE_X: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BR + tl.arange(0, BR)  # global rows of the [N * ROWS, COLS] stack
    cols = tl.arange(0, BC)
    rmask = rows < R
    mask = rmask[:, None] & (cols < COLS)[None, :]
    off = rows.to(tl.int64)[:, None] * COLS + cols[None, :]
    d = tl.load(DL + off, mask=mask, other=0.0)
    if HAS_MOM:
        mu = tl.load(MU + rows // ROWS, mask=rmask, other=0.0)  # one gate per matrix
        m = d + mu[:, None] * tl.load(M + off, mask=mask, other=0.0)
        tl.store(OUT_M + off, m, mask=mask)
        d = m
    x = tl.load(W + off, mask=mask, other=0.0) + d
    if STORE_X:
        tl.store(OUT_X + off, x, mask=mask)
    if NORM:
        rho = tl.load(RHO + rows, mask=rmask, other=0.0)
        nrm = tl.sqrt(tl.sum(x * x, axis=1))
        x = x / (nrm + eps)[:, None] * rho[:, None]
    tl.store(OUT_W + off, x, mask=mask)


def swiglu_apply(
    wg: Tensor,
    wu: Tensor,
    wd: Tensor,
    x: Tensor,
    *,
    mm_bf16: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """``f_W(x)`` for folded heads. x: [N, S, D] (row stride D); weights fp32 contiguous.

    Returns [N, S, D] fp32, written into ``out`` when given (fp32, row stride D, e.g. a chunk
    slice of the whole output).
    """
    N, S, D = x.shape
    Dh = wg.shape[1]
    if x.stride(2) != 1 or x.stride(1) != D:
        x = x.contiguous()
    if out is not None and (
        out.shape != x.shape or out.dtype != torch.float32 or out.stride()[1:] != (D, 1)
    ):
        raise ValueError("out must be fp32 [N, S, D] with row stride D")
    o = torch.empty(N, S, D, device=x.device, dtype=torch.float32) if out is None else out
    BD = _block(D, 1 << 30)
    BM = 64 if BD <= 256 else 32
    BH = _block(Dh, 64 if BD <= 256 else 32)
    grid = (triton.cdiv(S, BM), N)
    _swiglu_apply_kernel[grid](
        x, wg, wu, wd, o, S, D, Dh, x.stride(0), o.stride(0),
        BM=BM, BD=BD, BH=BH, MM_BF16=mm_bf16, EMU=_interpret(),
    )  # fmt: skip
    return o


def inner_grad(
    wg: Tensor, wu: Tensor, wd: Tensor, k: Tensor, v: Tensor, lr: Tensor, *, mm_bf16: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form ``(Delta_g, Delta_u, Delta_d)`` (neg_dot loss) of one range of rows.

    k, v: [N, S, D] (row stride D, equal strides); lr: [N, S, 3] (row stride 3); weights fp32
    contiguous. Returns fp32 [N, Dh, D], [N, Dh, D], [N, D, Dh].
    """
    N, S, D = k.shape
    Dh = wg.shape[1]
    if k.stride(2) != 1 or k.stride(1) != D or v.stride() != k.stride():
        k, v = k.contiguous(), v.contiguous()
    if lr.stride(2) != 1 or lr.stride(1) != 3:
        lr = lr.contiguous()
    dg = torch.empty(N, Dh, D, device=k.device, dtype=torch.float32)
    du = torch.empty_like(dg)
    dd = torch.empty(N, D, Dh, device=k.device, dtype=torch.float32)
    BD = _block(D, 1 << 30)
    BH = _block(Dh, 32 if BD <= 256 else 16)
    BS = 64 if BD <= 256 else 32
    grid = (triton.cdiv(Dh, BH), N)
    _inner_grad_kernel[grid](
        k, v, lr, wg, wu, wd, dg, du, dd, S, D, Dh, k.stride(0), lr.stride(0),
        BS=BS, BD=BD, BH=BH, MM_BF16=mm_bf16, EMU=_interpret(),
    )  # fmt: skip
    return dg, du, dd


def fused_update(
    w: Tensor,
    delta: Tensor,
    *,
    rho: Tensor | None,
    momentum: Tensor | None = None,
    mu: Tensor | None = None,
    store_sum: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``M' = Delta + mu M`` (if momentum), ``X = W + (M' or Delta)``, ``W' = renorm(X)`` (if rho).

    Args:
        w: weights (post-norm / no norm) or the pre-norm accumulator [N, rows, cols], fp32.
        delta: update direction, same shape.
        rho: reference row norms [N, rows, 1] or None (no renormalisation).
        momentum: momentum buffer like ``w`` or None.
        mu: per-matrix gate [N] (or [N, 1, 1]) with momentum.
        store_sum: also return ``X`` (the new pre-norm accumulator).

    Returns:
        ``(W', X or None, M' or None)``.
    """
    N, rows, cols = w.shape
    w, delta = w.contiguous(), delta.contiguous()
    out_w = torch.empty_like(w)
    out_x = torch.empty_like(w) if store_sum else out_w
    has_mom = momentum is not None
    if has_mom and mu is None:
        raise ValueError("fused_update: momentum needs mu (the chunk-mean beta per matrix)")
    m_in = momentum.contiguous() if momentum is not None else w
    out_m = torch.empty_like(w) if has_mom else w
    mu_t = mu.reshape(N).contiguous().float() if mu is not None else w
    rho_t = rho.reshape(N * rows).contiguous() if rho is not None else w
    BC = triton.next_power_of_2(cols)
    BR = max(1, min(64, 4096 // BC))
    grid = (triton.cdiv(N * rows, BR),)
    _update_kernel[grid](
        w, delta, m_in, mu_t, rho_t, out_x, out_w, out_m, N * rows, rows, cols, NORM_EPS,
        BR=BR, BC=BC, HAS_MOM=has_mom, NORM=rho is not None, STORE_X=store_sum,
    )  # fmt: skip
    return out_w, (out_x if store_sum else None), (out_m if has_mom else None)
