"""The normalised-gate maths shared by LN-LSTM and LN-GRU (maths: docs/layernorm.md).

Both the per-step reference (:mod:`.naive`) and the hoisted fast path (:mod:`.hoisted`) call
these functions, so the equations live in one place; they differ only in *where* the input path
is computed (inside or before the time loop) and which LayerNorm implementation runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft.ops.norm.naive import naive_layer_norm

__all__ = ["LNFn", "gate_ln", "gru_pointwise", "lstm_pointwise", "naive_ln", "torch_ln"]

# (x, (F,), weight, bias, eps) -> y, the signature of F.layer_norm
LNFn = Callable[[Tensor, tuple[int, ...], Tensor | None, Tensor | None, float], Tensor]
torch_ln: LNFn = F.layer_norm  # type: ignore[assignment]
naive_ln: LNFn = naive_layer_norm  # type: ignore[assignment]


def gate_ln(
    a: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    groups: int,
    ln: LNFn = torch_ln,
) -> Tensor:
    """LayerNorm of a gate pre-activation, jointly (``groups=1``) or per gate (``groups=G``).

    Args:
        a: ``[..., G*H]`` pre-activations.
        weight, bias: ``[G*H]`` gain / shift.
        eps: LN epsilon.
        groups: 1 = one LN over the whole vector (paper); G = each ``H`` slice on its own.
        ln: the LayerNorm implementation (``F.layer_norm`` or the reference).

    Returns:
        ``[..., G*H]``.
    """
    if groups == 1:
        return ln(a, (a.shape[-1],), weight, bias, eps)
    h = a.shape[-1] // groups
    y = ln(a.unflatten(-1, (groups, h)), (h,), None, None, eps).flatten(
        -2
    )  # [..., G, H] -> [..., G*H]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def lstm_pointwise(
    a: Tensor,
    c_prev: Tensor,
    ln_c_weight: Tensor | None,
    ln_c_bias: Tensor | None,
    eps: float,
    *,
    layer_norm: bool,
    carry_normalized: bool,
    ln: LNFn = torch_ln,
) -> tuple[Tensor, Tensor]:
    """The LSTM tail after the gate pre-activations are summed.

    ``c_t = σ(f) c_{t-1} + σ(i) tanh(g)``; ``h_t = σ(o) tanh(LN_c(c_t))`` (``tanh(c_t)`` without LN).

    Args:
        a: ``[B, 4H]`` summed pre-activations, gate order ``(i, f, g, o)``.
        c_prev: ``[B, H]`` carried cell.
        ln_c_weight, ln_c_bias: ``[H]`` LN_c parameters.
        eps: LN epsilon.
        layer_norm: apply LN_c.
        carry_normalized: carry ``LN_c(c_t)`` instead of the raw ``c_t`` (``per_gate`` variant).
        ln: LayerNorm implementation.

    Returns:
        ``(h_t, c_t)``, each ``[B, H]``.
    """
    i, f, g, o = a.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    if layer_norm:
        cn = ln(c, (c.shape[-1],), ln_c_weight, ln_c_bias, eps)
        h = torch.sigmoid(o) * torch.tanh(cn)
        return h, (cn if carry_normalized else c)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_pointwise(gi: Tensor, gh: Tensor, h_prev: Tensor) -> Tensor:
    """The GRU tail: ``r, z = σ(gi_rz + gh_rz)``; ``n = tanh(gi_n + r gh_n)``; ``h = (1-z) n + z h``.

    Args:
        gi: ``[B, 3H]`` input path, already normalised and biased (``b_ih`` and ``b_h{r,z}`` in).
        gh: ``[B, 3H]`` recurrent path, normalised, with ``b_hn`` in its ``n`` slice.
        h_prev: ``[B, H]``.

    Returns:
        ``h_t``: ``[B, H]``.
    """
    i_rz, i_n = gi.split([2 * h_prev.shape[-1], h_prev.shape[-1]], dim=-1)
    h_rz, h_n = gh.split([2 * h_prev.shape[-1], h_prev.shape[-1]], dim=-1)
    r, z = torch.sigmoid(i_rz + h_rz).chunk(2, dim=-1)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h_prev - n)
