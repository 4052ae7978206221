"""Per-step reference LN-LSTM / LN-GRU (one layer, one direction), written from the equations.

Everything happens inside the time loop, including the input projection and its LayerNorm, with
the reference LayerNorm (:func:`batchcraft.ops.norm.naive_layer_norm`). Variable lengths are
handled by masking: at steps ``t >= lengths[b]`` the state of row ``b`` is held and its output is 0,
so a reversed pass starts at each sequence's last valid step (``torch.nn.LSTM`` semantics).
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchcraft.ops.recurrent.gates import gate_ln, gru_pointwise, lstm_pointwise, naive_ln
from batchcraft.ops.recurrent.params import GRUParams, LSTMParams

__all__ = ["naive_ln_gru", "naive_ln_lstm", "step_mask"]


def step_mask(lengths: Tensor | None, t: int, like: Tensor) -> Tensor | None:
    """``[B, 1]`` bool mask of the rows still running at step ``t`` (``None``: all of them)."""
    if lengths is None:
        return None
    return (lengths.to(like.device) > t).unsqueeze(-1)


def naive_ln_lstm(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    p: LSTMParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Reference LN-LSTM over a time-major sequence.

    Args:
        x: ``[T, B, I]``.
        hx: ``(h0, c0)``, each ``[B, H]``.
        p: the layer's parameters.
        layer_norm: ``False`` gives exactly ``torch.nn.LSTM``.
        eps: LN epsilon.
        variant: ``"paper"`` or ``"per_gate"``.
        lengths: ``[B]`` valid steps per row, or ``None``.
        reverse: run from ``t = T-1`` down to 0.

    Returns:
        ``(out [T, B, H], (h_n [B, H], c_n [B, H]))``.
    """
    h, c = hx
    groups = 4 if variant == "per_gate" else 1
    outs: list[Tensor] = [x.new_zeros(0)] * x.shape[0]
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        gi = x[t] @ p.weight_ih.T  # [B, 4H]
        gh = h @ p.weight_hh.T  # [B, 4H]
        if layer_norm:
            gi = gate_ln(gi, p.ln_ih_weight, p.ln_ih_bias, eps, groups, naive_ln)
            gh = gate_ln(gh, p.ln_hh_weight, p.ln_hh_bias, eps, groups, naive_ln)
        a = gi + gh
        if p.bias_ih is not None:
            a = a + p.bias_ih
        if p.bias_hh is not None:
            a = a + p.bias_hh
        h_new, c_new = lstm_pointwise(
            a, c, p.ln_c_weight, p.ln_c_bias, eps,
            layer_norm=layer_norm, carry_normalized=variant == "per_gate", ln=naive_ln,
        )  # fmt: skip
        m = step_mask(lengths, t, x)
        if m is None:
            h, c, outs[t] = h_new, c_new, h_new
        else:
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
    return torch.stack(outs), (h, c)


def naive_ln_gru(
    x: Tensor,
    h0: Tensor,
    p: GRUParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """Reference LN-GRU (four LNs, reset applied after normalising the recurrent candidate term).

    Args:
        x: ``[T, B, I]``.
        h0: ``[B, H]``.
        p: the layer's parameters.
        layer_norm: ``False`` gives exactly ``torch.nn.GRU``.
        eps: LN epsilon.
        variant: ``"paper"`` (LN over r and z jointly) or ``"per_gate"`` (each on its own).
        lengths: ``[B]`` valid steps per row, or ``None``.
        reverse: run from ``t = T-1`` down to 0.

    Returns:
        ``(out [T, B, H], h_n [B, H])``.
    """
    h = h0
    hid = h0.shape[-1]
    groups = 2 if variant == "per_gate" else 1
    outs: list[Tensor] = [x.new_zeros(0)] * x.shape[0]
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        gi = x[t] @ p.weight_ih.T  # [B, 3H]
        gh = h @ p.weight_hh.T  # [B, 3H]
        if layer_norm:
            i_rz, i_n = gi.split([2 * hid, hid], dim=-1)
            h_rz, h_n = gh.split([2 * hid, hid], dim=-1)
            i_rz = gate_ln(i_rz, p.ln_ih_rz_weight, p.ln_ih_rz_bias, eps, groups, naive_ln)
            i_n = gate_ln(i_n, p.ln_ih_n_weight, p.ln_ih_n_bias, eps, 1, naive_ln)
            h_rz = gate_ln(h_rz, p.ln_hh_rz_weight, p.ln_hh_rz_bias, eps, groups, naive_ln)
            h_n = gate_ln(h_n, p.ln_hh_n_weight, p.ln_hh_n_bias, eps, 1, naive_ln)
            gi, gh = torch.cat([i_rz, i_n], -1), torch.cat([h_rz, h_n], -1)
        if p.bias_ih is not None:
            gi = gi + p.bias_ih
        if p.bias_hh is not None:
            gh = gh + p.bias_hh
        h_new = gru_pointwise(gi, gh, h)
        m = step_mask(lengths, t, x)
        if m is None:
            h, outs[t] = h_new, h_new
        else:
            h = torch.where(m, h_new, h)
            outs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
    return torch.stack(outs), h
