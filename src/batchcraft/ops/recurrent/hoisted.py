"""Hoisted LN-LSTM / LN-GRU: the input path for all T steps is one GEMM + one LayerNorm.

``LN_ih(W_ih x_t)`` does not depend on the recurrence, so it is computed for the whole sequence
before the loop (``[T*B, I] x [I, G*H]``) with the biases folded in; only the recurrent GEMM, its
LayerNorm and the pointwise tail stay inside the loop. Exact: same maths as :mod:`.naive`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from batchcraft.ops.recurrent.gates import gate_ln, gru_pointwise, lstm_pointwise
from batchcraft.ops.recurrent.naive import step_mask
from batchcraft.ops.recurrent.params import GRUParams, LSTMParams

__all__ = ["gru_input_path", "hoisted_ln_gru", "hoisted_ln_lstm", "lstm_input_path"]

LSTMStep = Callable[..., tuple[Tensor, Tensor]]
GRUStep = Callable[..., Tensor]


def _lstm_step(
    gi_t: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    ln_hh_weight: Tensor | None,
    ln_hh_bias: Tensor | None,
    ln_c_weight: Tensor | None,
    ln_c_bias: Tensor | None,
    eps: float,
    groups: int,
    layer_norm: bool,
    carry_normalized: bool,
) -> tuple[Tensor, Tensor]:
    """One step after hoisting: recurrent GEMM (+ LN_hh), add, pointwise tail."""
    if layer_norm:
        a = gi_t + gate_ln(h @ weight_hh.T, ln_hh_weight, ln_hh_bias, eps, groups)
    else:
        a = torch.addmm(gi_t, h, weight_hh.T)
    return lstm_pointwise(
        a, c, ln_c_weight, ln_c_bias, eps, layer_norm=layer_norm, carry_normalized=carry_normalized
    )


def _gru_step(
    gi_t: Tensor,
    h: Tensor,
    weight_hh: Tensor,
    bias_hh_n: Tensor | None,
    ln_rz_weight: Tensor | None,
    ln_rz_bias: Tensor | None,
    ln_n_weight: Tensor | None,
    ln_n_bias: Tensor | None,
    eps: float,
    groups: int,
    layer_norm: bool,
) -> Tensor:
    """One GRU step after hoisting (``gi_t`` already holds ``b_ih`` and ``b_h{r,z}``)."""
    hid = h.shape[-1]
    gh = h @ weight_hh.T  # [B, 3H]
    h_rz, h_n = gh.split([2 * hid, hid], dim=-1)
    if layer_norm:
        h_rz = gate_ln(h_rz, ln_rz_weight, ln_rz_bias, eps, groups)
        h_n = gate_ln(h_n, ln_n_weight, ln_n_bias, eps, 1)
    if bias_hh_n is not None:
        h_n = h_n + bias_hh_n
    return gru_pointwise(gi_t, torch.cat([h_rz, h_n], -1), h)


def _input_path(x: Tensor, weight_ih: Tensor) -> Tensor:
    t, b, i = x.shape
    # [T*B, I] @ [I, G*H] -> [T, B, G*H] (sizes spelled out: B = 0 is a valid empty batch)
    return (x.reshape(t * b, i) @ weight_ih.T).view(t, b, weight_ih.shape[0])


def _run(
    step: Callable[..., Tensor | tuple[Tensor, Tensor]],
    gi: Tensor,
    state: tuple[Tensor, ...],
    lengths: Tensor | None,
    reverse: bool,
    args: tuple[object, ...],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The time loop shared by LSTM (state (h, c)) and GRU (state (h,))."""
    outs: list[Tensor] = [gi.new_zeros(0)] * gi.shape[0]
    steps = range(gi.shape[0] - 1, -1, -1) if reverse else range(gi.shape[0])
    for t in steps:
        new = step(gi[t], *state, *args)
        new_state = new if isinstance(new, tuple) else (new,)
        m = step_mask(lengths, t, gi)
        if m is None:
            state, outs[t] = new_state, new_state[0]
        else:
            state = tuple(torch.where(m, n, s) for n, s in zip(new_state, state, strict=True))
            outs[t] = torch.where(m, new_state[0], torch.zeros_like(new_state[0]))
    return torch.stack(outs), state


def lstm_input_path(
    x: Tensor, p: LSTMParams, *, layer_norm: bool, eps: float, groups: int
) -> Tensor:
    """``LN_ih(W_ih x_t) + b_ih + b_hh`` for all steps at once: ``[T, B, I] -> [T, B, 4H]``."""
    gi = _input_path(x, p.weight_ih)
    if layer_norm:
        gi = gate_ln(gi, p.ln_ih_weight, p.ln_ih_bias, eps, groups)
    for b in (p.bias_ih, p.bias_hh):
        if b is not None:
            gi = gi + b
    return gi


def hoisted_ln_lstm(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    p: LSTMParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
    step: LSTMStep | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Fast LN-LSTM with the input path hoisted; same contract as :func:`.naive.naive_ln_lstm`.

    Args:
        x: ``[T, B, I]``.
        hx: ``(h0, c0)``, each ``[B, H]``.
        p, layer_norm, eps, variant, lengths, reverse: as the reference.
        step: replacement for the per-step function (e.g. a ``torch.compile``d one).

    Returns:
        ``(out [T, B, H], (h_n, c_n))``.
    """
    groups = 4 if variant == "per_gate" else 1
    gi = lstm_input_path(x, p, layer_norm=layer_norm, eps=eps, groups=groups)  # [T, B, 4H]
    args = (
        p.weight_hh, p.ln_hh_weight, p.ln_hh_bias, p.ln_c_weight, p.ln_c_bias,
        eps, groups, layer_norm, variant == "per_gate",
    )  # fmt: skip
    out, (h, c) = _run(step or _lstm_step, gi, hx, lengths, reverse, args)
    return out, (h, c)


def gru_input_path(
    x: Tensor, p: GRUParams, *, layer_norm: bool, eps: float, groups: int
) -> tuple[Tensor, Tensor | None]:
    """Hoisted GRU input path ``[T, B, 3H]`` (with ``b_ih`` and ``b_h{r,z}``) and the ``b_hn`` left over."""
    hid = p.hidden_size
    gi = _input_path(x, p.weight_ih)  # [T, B, 3H]
    if layer_norm:
        i_rz, i_n = gi.split([2 * hid, hid], dim=-1)
        gi = torch.cat(
            [
                gate_ln(i_rz, p.ln_ih_rz_weight, p.ln_ih_rz_bias, eps, groups),
                gate_ln(i_n, p.ln_ih_n_weight, p.ln_ih_n_bias, eps, 1),
            ],
            -1,
        )
    if p.bias_ih is not None:
        gi = gi + p.bias_ih
    bias_hh_n = None
    if p.bias_hh is not None:
        b_rz, bias_hh_n = p.bias_hh.split([2 * hid, hid])
        gi = gi + torch.cat([b_rz, torch.zeros_like(bias_hh_n)])  # b_h{r,z} hoisted, b_hn stays
    return gi, bias_hh_n


def hoisted_ln_gru(
    x: Tensor,
    h0: Tensor,
    p: GRUParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
    step: GRUStep | None = None,
) -> tuple[Tensor, Tensor]:
    """Fast LN-GRU with the input path hoisted; same contract as :func:`.naive.naive_ln_gru`.

    Returns:
        ``(out [T, B, H], h_n [B, H])``.
    """
    groups = 2 if variant == "per_gate" else 1
    gi, bias_hh_n = gru_input_path(x, p, layer_norm=layer_norm, eps=eps, groups=groups)
    args = (
        p.weight_hh, bias_hh_n, p.ln_hh_rz_weight, p.ln_hh_rz_bias,
        p.ln_hh_n_weight, p.ln_hh_n_bias, eps, groups, layer_norm,
    )  # fmt: skip
    out, (h,) = _run(step or _gru_step, gi, (h0,), lengths, reverse, args)
    return out, h
