"""The elementwise parts of the LaCT layer around the op, each one autograd node (spec §7).

:func:`ttt_qk_prep`: the fast-weight queries and keys at once (``x: [B, T, 2, d]``, q then k,
e.g. a view of the qkv projection)::

    y = x * scale + offset                    scale, offset: [2, d]
    a = silu(y)
    n = a / (||a||_2 + eps)                   over each head's D = d / H
    out = rope(n)                             rotate-half RoPE on the [Ha, Da] split (optional)

:func:`ttt_output`: the op output's per-head RMSNorm, SiLU output gate and the sum with the
attention branch::

    y = o_att + rmsnorm(o) * w * silu(gate)   o: [B, T, H, D], gate: [B, T, H], w: [D]

Each has a plain-autograd reference (``*_reference``, what the layer computed before) that the
tests compare with. The fused nodes run about half the large kernels of the composition, forward
and backward, and keep only their inputs for backward (``y``, ``a`` and the norms are recomputed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ttt_output", "ttt_output_reference", "ttt_qk_prep", "ttt_qk_prep_reference"]


def _swap_halves(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat([x[..., h:], x[..., :h]], dim=-1)


def ttt_qk_prep_reference(
    x: Tensor,
    scale: Tensor,
    offset: Tensor,
    *,
    heads: int,
    eps: float = 1e-5,
    rope: tuple[Tensor, Tensor] | None = None,
    rope_heads: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The unfused composition (the reference of :func:`ttt_qk_prep`); same arguments."""
    B, T, _, d = x.shape
    a = torch.nn.functional.silu(x * scale + offset).reshape(B, T, 2, heads, d // heads)
    n = a / (a.norm(dim=-1, keepdim=True) + eps)
    if rope is not None:
        assert rope_heads is not None
        cos, sin_signed = rope  # [T, Da]
        r = n.reshape(B, T, 2, rope_heads, d // rope_heads)
        c, s = cos[None, :, None, None], sin_signed[None, :, None, None]
        n = (r * c + _swap_halves(r) * s).reshape(B, T, 2, heads, d // heads)
    return n[:, :, 0], n[:, :, 1]


class _QKPrep(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        offset: Tensor,
        cos: Tensor | None,
        sin_signed: Tensor | None,
        heads: int,
        rope_heads: int,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        B, T, _, d = x.shape
        D = d // heads
        a = torch.nn.functional.silu(torch.addcmul(offset, x, scale)).view(B, T, 2, heads, D)
        inv = (torch.linalg.vector_norm(a, dim=-1, keepdim=True) + eps).reciprocal_()
        out = x.new_empty(2, B, T, d)  # q then k, each contiguous [B, T, d]
        out_v = out.permute(1, 2, 0, 3)  # [B, T, 2, d]
        if cos is None:
            torch.mul(a, inv, out=out_v.view(B, T, 2, heads, D))
        else:
            assert sin_signed is not None
            Da = d // rope_heads
            n = (a * inv).view(B, T, 2, rope_heads, Da)
            c, s = cos[None, :, None, None], sin_signed[None, :, None, None]  # [1, T, 1, 1, Da]
            torch.addcmul(n * c, _swap_halves(n), s, out=out_v.view(B, T, 2, rope_heads, Da))
        ctx.save_for_backward(x, scale, offset, cos, sin_signed)
        ctx.meta = (heads, rope_heads, eps)
        return out[0].view(B, T, heads, D), out[1].view(B, T, heads, D)

    @staticmethod
    def backward(ctx: Any, gq: Tensor | None, gk: Tensor | None) -> Any:  # type: ignore[override]
        x, scale, offset, cos, sin_signed = ctx.saved_tensors
        heads, rope_heads, eps = ctx.meta
        B, T, _, d = x.shape
        D = d // heads
        g = x.new_zeros(B, T, 2, d) if gq is None or gk is None else None
        if g is None:
            assert gq is not None and gk is not None
            g = torch.stack([gq.reshape(B, T, d), gk.reshape(B, T, d)], dim=2)  # [B, T, 2, d]
        else:
            if gq is not None:
                g[:, :, 0] = gq.reshape(B, T, d)
            if gk is not None:
                g[:, :, 1] = gk.reshape(B, T, d)
        if cos is not None:  # the rotation's transpose: rotate by the opposite angles
            Da = d // rope_heads
            gr = g.view(B, T, 2, rope_heads, Da)
            c, s = cos[None, :, None, None], sin_signed[None, :, None, None]
            g = torch.addcmul(gr * c, _swap_halves(gr), s, value=-1).view(B, T, 2, d)
        y = torch.addcmul(offset, x, scale)  # recomputed: [B, T, 2, d]
        a = torch.nn.functional.silu(y).view(B, T, 2, heads, D)
        r = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
        inv = (r + eps).reciprocal_()
        gn = g.view(B, T, 2, heads, D)
        # n = a / (r + eps), r = ||a||:  ga = gn / (r + eps) - a <gn, a> / ((r + eps)^2 r)
        dot = (gn * a).sum(-1, keepdim=True)
        coef = torch.where(r > 0, dot * inv * inv / r.clamp_min(torch.finfo(r.dtype).tiny), 0.0)
        ga = torch.addcmul(gn * inv, a, coef, value=-1).view(B, T, 2, d)
        gy = torch.ops.aten.silu_backward(ga, y)
        gx = gy * scale
        gscale = (gy * x).sum((0, 1))
        goffset = gy.sum((0, 1))
        return gx, gscale, goffset, None, None, None, None, None


def ttt_qk_prep(
    x: Tensor,
    scale: Tensor,
    offset: Tensor,
    *,
    heads: int,
    eps: float = 1e-5,
    rope: tuple[Tensor, Tensor] | None = None,
    rope_heads: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Prepare the fast-weight queries and keys (affine, SiLU, per-head L2, RoPE) in one node.

    Args:
        x: queries and keys ``[B, T, 2, d]`` (any strides; e.g. ``qkv.view(B, T, 3, d)[:, :, :2]``).
        scale: ``[2, d]`` affine scales (q row, k row).
        offset: ``[2, d]`` affine offsets.
        heads: fast-weight heads H (the L2 norm runs over each head's ``D = d / H``).
        eps: added to the norm.
        rope: ``(cos, sin_signed)`` tables ``[T, Da]`` (``batchcraft.nn.rope.rope_tables``) or
            None for no rotation.
        rope_heads: Ha, the head split the rotation uses (``Da = d / Ha``, ``D % Da == 0``).

    Returns:
        ``(q, k)``: ``[B, T, H, D]`` each, contiguous, in ``x``'s dtype (computed in float32 or
        higher).
    """
    _, T, two, d = x.shape
    if two != 2 or scale.shape != (2, d) or offset.shape != (2, d) or d % heads:
        raise ValueError(
            f"expected x [B, T, 2, d], scale and offset [2, d] with d % heads == 0; got "
            f"{tuple(x.shape)}, {tuple(scale.shape)}, {tuple(offset.shape)}, heads={heads}"
        )
    cdt = torch.promote_types(x.dtype, torch.float32)
    cos = sin = None
    if rope is not None:
        if rope_heads is None or d % rope_heads or (d // heads) % (d // rope_heads):
            raise ValueError(f"rope_heads ({rope_heads}) must split each head of {d // heads}")
        cos, sin = (t.to(cdt) for t in rope)
        if cos.shape != (T, d // rope_heads):
            raise ValueError(f"rope tables must be [T, Da] = {(T, d // rope_heads)}")
    q, k = _QKPrep.apply(
        x.to(cdt), scale.to(cdt), offset.to(cdt), cos, sin, heads, rope_heads or heads, eps
    )
    return q.to(x.dtype), k.to(x.dtype)


def ttt_output_reference(
    o: Tensor, weight: Tensor, gate: Tensor | None, o_att: Tensor | None, *, eps: float = 1e-5
) -> Tensor:
    """The unfused composition (the reference of :func:`ttt_output`); same arguments."""
    B, T, H, D = o.shape
    y = torch.nn.functional.rms_norm(o, (D,), weight, eps)
    if gate is not None:
        y = y * torch.nn.functional.silu(gate).unsqueeze(-1)
    y = y.reshape(B, T, H * D)
    return y if o_att is None else o_att + y


class _Output(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, o: Tensor, weight: Tensor, gate: Tensor | None, o_att: Tensor | None, eps: float
    ) -> Tensor:
        B, T, H, D = o.shape
        r = torch.rsqrt(o.pow(2).mean(-1, keepdim=True).add_(eps))  # [B, T, H, 1]
        rg = r if gate is None else r * torch.nn.functional.silu(gate).unsqueeze(-1)
        y = o.new_empty(B, T, H * D)
        yv = y.view(B, T, H, D)
        if o_att is None:
            torch.mul(o * rg, weight, out=yv)
        else:
            torch.addcmul(o_att.view(B, T, H, D), o * rg, weight, out=yv)
        ctx.save_for_backward(o, weight, gate, r)
        ctx.has_att = o_att is not None
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # type: ignore[override]
        o, weight, gate, r = ctx.saved_tensors
        B, T, H, D = o.shape
        gv = g.view(B, T, H, D)
        s = None if gate is None else torch.nn.functional.silu(gate).unsqueeze(-1)
        rg = r if s is None else r * s
        gw = gv * weight  # d/d(n * silu(gate)) with n = o * r
        dot = (gw * o).sum(-1, keepdim=True)  # <g w, o> per head: [B, T, H, 1]
        # y = o r s w:  go = r s (gw - n <gw, n> / D) = rg gw - o (rg r^2 <gw, o> / D)
        go = torch.addcmul(gw * rg, o, rg * r * r * dot / D, value=-1)
        gweight = (gv * o * rg).sum((0, 1, 2))
        ggate = None
        if gate is not None:
            ggate = (dot * r).squeeze(-1) * torch.ops.aten.silu_backward(
                torch.ones_like(gate), gate
            )
        gatt = g if ctx.has_att else None
        return go, gweight, ggate, gatt, None


def ttt_output(
    o: Tensor, weight: Tensor, gate: Tensor | None, o_att: Tensor | None, *, eps: float = 1e-5
) -> Tensor:
    """Normalise, gate and merge the TTT branch output in one node.

    Args:
        o: the op output ``[B, T, H, D]`` (any strides).
        weight: the per-head RMSNorm weight ``[D]``.
        gate: raw output-gate logits ``[B, T, H]`` (SiLU applied here), or None (no gate).
        o_att: the attention branch ``[B, T, H * D]`` to add, or None.
        eps: RMSNorm epsilon.

    Returns:
        ``[B, T, H * D]`` (contiguous), ``o``'s dtype.
    """
    B, T, H, D = o.shape
    if weight.shape != (D,) or (gate is not None and gate.shape != (B, T, H)):
        raise ValueError(
            f"expected weight [D] = [{D}] and gate [B, T, H] = {[B, T, H]}; got "
            f"{tuple(weight.shape)}, {None if gate is None else tuple(gate.shape)}"
        )
    if o_att is not None and o_att.shape != (B, T, H * D):
        raise ValueError(f"o_att must be [B, T, H*D] = {[B, T, H * D]}, got {tuple(o_att.shape)}")
    dt = o.dtype
    y: Tensor = _Output.apply(
        o,
        weight.to(dt),
        None if gate is None else gate.to(dt),
        None if o_att is None else o_att.to(dt),
        eps,
    )
    return y
