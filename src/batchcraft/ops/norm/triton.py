"""Triton LayerNorm / RMSNorm kernels: forward + backward, fp32 statistics, optional fused residual add.

Imported lazily (never at ``import batchcraft``). On CPU the kernels run under ``TRITON_INTERPRET=1``
(tests only); on CUDA they are the ``impl="auto"`` path.

Layout: one program normalises one row of ``[N, F]`` held entirely in registers
(``BLOCK = next_pow2(F)``). The backward computes ``dx`` per row and accumulates ``dγ``/``dβ`` per
program over a contiguous slab of rows into a ``[G, F]`` fp32 buffer that is summed afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["MAX_FEATURES", "triton_norm"]

MAX_FEATURES = 65536  # one row must fit in one program's registers


@triton.jit
def _norm_fwd_kernel(
    X, R, S, Y, W, B, MEAN, RSTD,
    stride_x, stride_r, stride_s, stride_y,
    F, eps,
    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < F
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # round the sum to the dtype of S so y is the norm of exactly the s we return
        x = (x + r).to(S.dtype.element_ty)
        tl.store(S + row * stride_s + cols, x, mask=mask)
        x = x.to(tl.float32)
    if IS_RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=0) / F
        xc = tl.where(mask, x - mean, 0.0)
        tl.store(MEAN + row, mean)
    var = tl.sum(xc * xc, axis=0) / F
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(RSTD + row, rstd)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    X, W, DY, DX, DS, DW, DB, MEAN, RSTD,
    stride_x, stride_dy, stride_dx, stride_ds,
    N, F, ROWS_PER_PROG,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_DS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < F
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, ROWS_PER_PROG):
        row = pid * ROWS_PER_PROG + i
        m = mask & ((cols * 0 + row) < N)  # vector mask: also drops rows past the end
        x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=m, other=0.0).to(tl.float32)
        row_c = tl.minimum(row, N - 1)  # rows past the end are fully masked below
        rstd = tl.load(RSTD + row_c)
        if IS_RMS:
            xhat = x * rstd
        else:
            mean = tl.load(MEAN + row_c)
            xhat = tl.where(m, (x - mean) * rstd, 0.0)
        if HAS_W:
            g = dy * w
        else:
            g = dy
        c1 = tl.sum(g * xhat, axis=0) / F
        if IS_RMS:
            dx = (g - xhat * c1) * rstd
        else:
            c2 = tl.sum(g, axis=0) / F
            dx = (g - xhat * c1 - c2) * rstd
        if HAS_DS:
            dx = dx + tl.load(DS + row * stride_ds + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=m)
        dw += dy * xhat
        db += dy
    tl.store(DW + pid * F + cols, dw, mask=mask)
    tl.store(DB + pid * F + cols, db, mask=mask)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


class _TritonNorm(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        residual: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        is_rms: bool,
        residual_in_fp32: bool,
    ) -> tuple[Tensor, Tensor]:
        shape = x.shape
        feat = weight.numel() if weight is not None else shape[-1]
        x2 = x.reshape(-1, feat).contiguous()  # [N, F]
        n = x2.shape[0]
        r2 = residual.reshape(-1, feat).contiguous() if residual is not None else x2
        s_dtype = torch.float32 if residual_in_fp32 else x.dtype
        s2 = torch.empty(n, feat, dtype=s_dtype, device=x.device) if residual is not None else x2
        y2 = torch.empty_like(x2)
        mean = torch.empty(n, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n, dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(feat)
        if n > 0:
            _norm_fwd_kernel[(n,)](
                x2, r2, s2, y2,
                weight if weight is not None else x2, bias if bias is not None else x2,
                mean, rstd,
                x2.stride(0), r2.stride(0), s2.stride(0), y2.stride(0),
                feat, eps,
                IS_RMS=is_rms, HAS_RES=residual is not None,
                HAS_W=weight is not None, HAS_B=bias is not None,
                BLOCK=block, num_warps=_num_warps(block),
            )  # fmt: skip
        ctx.save_for_backward(s2, weight, bias, mean, rstd)
        ctx.is_rms = is_rms
        ctx.has_res = residual is not None
        ctx.shape = shape
        ctx.res_dtype = residual.dtype if residual is not None else None
        ctx.x_dtype = x.dtype
        if (
            residual is None
        ):  # nothing to return besides y: an empty, non-differentiable placeholder
            empty = x2.new_empty(0)
            ctx.mark_non_differentiable(empty)
            return y2.view(shape), empty
        return y2.view(shape), s2.view(shape)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, ds: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        s2, weight, bias, mean, rstd = ctx.saved_tensors
        n, feat = s2.shape
        dy2 = dy.reshape(n, feat).contiguous()
        has_ds = ctx.has_res and ds is not None
        ds2 = ds.reshape(n, feat).contiguous() if has_ds else dy2  # type: ignore[union-attr]
        dx2 = torch.empty(n, feat, dtype=s2.dtype, device=s2.device)
        block = triton.next_power_of_2(feat)
        if s2.is_cuda:
            sms = torch.cuda.get_device_properties(s2.device).multi_processor_count
            groups = max(1, min(n, 4 * sms))
        else:
            groups = max(1, min(n, 4))
        rows_per_prog = math.ceil(n / groups) if n > 0 else 1
        groups = math.ceil(n / rows_per_prog) if n > 0 else 1
        dw = torch.zeros(groups, feat, dtype=torch.float32, device=s2.device)
        db = torch.zeros(groups, feat, dtype=torch.float32, device=s2.device)
        if n > 0:
            _norm_bwd_kernel[(groups,)](
                s2, weight if weight is not None else s2, dy2, dx2, ds2, dw, db, mean, rstd,
                s2.stride(0), dy2.stride(0), dx2.stride(0), ds2.stride(0),
                n, feat, rows_per_prog,
                IS_RMS=ctx.is_rms, HAS_W=weight is not None, HAS_DS=has_ds,
                BLOCK=block, num_warps=_num_warps(block),
            )  # fmt: skip
        shape = ctx.shape
        dx = dx2.view(shape).to(ctx.x_dtype)
        dres = dx2.view(shape).to(ctx.res_dtype) if ctx.has_res else None
        dweight = dw.sum(0).to(weight.dtype).view(weight.shape) if weight is not None else None
        dbias = db.sum(0).to(bias.dtype).view(bias.shape) if bias is not None else None
        return dx, dres, dweight, dbias, None, None, None


def triton_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    is_rms: bool,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    """LayerNorm (``is_rms=False``) or RMSNorm of ``x`` (+ ``residual``) over the flattened trailing dims.

    Args:
        x: ``[..., F]`` input; the caller has flattened ``normalized_shape`` into ``F`` (or F is
            given by ``weight.numel()``).
        weight: ``[F]`` gain or ``None``.
        bias: ``[F]`` shift or ``None`` (ignored for RMSNorm).
        eps: variance epsilon.
        is_rms: RMSNorm instead of LayerNorm.
        residual: ``[..., F]`` added to ``x`` before the norm, or ``None``.
        residual_in_fp32: keep the returned sum in fp32.

    Returns:
        ``(y, s)`` where ``y`` has ``x.dtype`` and ``s = x + residual`` (an empty tensor when there
        is no residual).
    """
    feat = x.shape[-1] if weight is None else weight.numel()
    if feat > MAX_FEATURES:
        raise ValueError(
            f"the Triton norm holds one row in registers: F ({feat}) must be <= {MAX_FEATURES}; "
            'use impl="torch" for wider rows'
        )
    y, s = _TritonNorm.apply(x, residual, weight, bias, eps, is_rms, residual_in_fp32)
    return y, s
