"""The elementwise parts of the LaCT layer around the op, each one autograd node.

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
    # Every large tensor after the first op is contiguous [B, T, 2, d] and updated in place where
    # possible: elementwise kernels on strided or permuted outputs run several times slower.
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
        a = torch.nn.functional.silu(torch.addcmul(offset, x, scale), inplace=True)
        a5 = a.view(B, T, 2, heads, D)
        inv = (torch.linalg.vector_norm(a5, dim=-1, keepdim=True) + eps).reciprocal_()
        n = a5.mul_(inv).view(B, T, 2, d)  # [B, T, 2, d], contiguous
        if cos is not None:
            assert sin_signed is not None
            Da = d // rope_heads
            nr = n.view(B, T, 2, rope_heads, Da)
            sw = _swap_halves(nr)
            c, s = cos[None, :, None, None], sin_signed[None, :, None, None]  # [1, T, 1, 1, Da]
            nr.mul_(c).addcmul_(sw, s)
        ctx.save_for_backward(x, scale, offset, cos, sin_signed)
        ctx.meta = (heads, rope_heads, eps)
        out = n.view(B, T, 2, heads, D)
        return out[:, :, 0], out[:, :, 1]  # [B, T, H, D] each (token stride 2d)

    @staticmethod
    def backward(ctx: Any, gq: Tensor | None, gk: Tensor | None) -> Any:  # type: ignore[override]
        x, scale, offset, cos, sin_signed = ctx.saved_tensors
        heads, rope_heads, eps = ctx.meta
        B, T, _, d = x.shape
        D = d // heads
        g = x.new_empty(B, T, 2, d)
        g5 = g.view(B, T, 2, heads, D)
        for i, gi in enumerate((gq, gk)):
            if gi is None:
                g5[:, :, i].zero_()
            else:
                g5[:, :, i].copy_(gi)
        if cos is not None:  # the rotation's transpose: rotate by the opposite angles
            Da = d // rope_heads
            gr = g.view(B, T, 2, rope_heads, Da)
            sw = _swap_halves(gr)
            c, s = cos[None, :, None, None], sin_signed[None, :, None, None]
            gr.mul_(c).addcmul_(sw, s, value=-1)
        y = torch.addcmul(offset, x, scale)  # recomputed: [B, T, 2, d]
        a5 = torch.nn.functional.silu(y).view(B, T, 2, heads, D)
        r = torch.linalg.vector_norm(a5, dim=-1, keepdim=True)
        inv = (r + eps).reciprocal_()
        # n = a / (r + eps), r = ||a||:  ga = gn / (r + eps) - a <gn, a> / ((r + eps)^2 r)
        # (r = 0 means a = 0 and <gn, a> = 0: the clamp only avoids 0 / 0)
        dot = torch.linalg.vecdot(g5, a5, dim=-1).unsqueeze(-1)
        coef = dot.mul_(inv).mul_(inv).div_(r.clamp_min(torch.finfo(r.dtype).tiny))
        ga = g5.mul_(inv).addcmul_(a5, coef, value=-1).view(B, T, 2, d)
        gy = torch.ops.aten.silu_backward.grad_input(ga, y, grad_input=ga)
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
        ``(q, k)``: ``[B, T, H, D]`` each (views of one ``[B, T, 2, H, D]`` buffer), in ``x``'s
        dtype (computed in float32 or higher).
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
