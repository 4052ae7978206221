"""Layer-normalised LSTM / GRU ops (one layer, one direction, time-major) (maths: docs/layernorm.md).

``impl`` selects the path: ``"naive"`` (per-step reference), ``"hoisted"`` (input path hoisted out
of the loop, autograd through the loop), ``"fused"`` (LN-LSTM / LN-GRU, paper variant: hoisted input
path and a hand-written backward through time, :mod:`.fused`; other cases run ``"hoisted"``), ``"compile"``
(hoisted with ``torch.compile`` of the step; needs a working inductor backend) or ``"auto"``
(``"fused"`` where it applies, else ``"hoisted"``). Multi-layer, bidirectional and packed
inputs are handled by :mod:`batchcraft.nn.rnn` on top of these.

Example::

    out, (h_n, c_n) = ln_lstm(x, (h0, c0), params)          # x: [T, B, I] -> out: [T, B, H]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.recurrent.fused import fused_ln_gru, fused_ln_lstm
from batchcraft.ops.recurrent.hoisted import _gru_step, _lstm_step, hoisted_ln_gru, hoisted_ln_lstm
from batchcraft.ops.recurrent.naive import naive_ln_gru, naive_ln_lstm
from batchcraft.ops.recurrent.params import VARIANTS, GRUParams, LSTMParams, check_variant

__all__ = [
    "IMPLS",
    "VARIANTS",
    "GRUParams",
    "LSTMParams",
    "hoisted_ln_gru",
    "hoisted_ln_lstm",
    "ln_gru",
    "ln_lstm",
    "naive_ln_gru",
    "naive_ln_lstm",
]

IMPLS = ("auto", "naive", "hoisted", "fused", "compile")


@functools.cache
def _compiled(step: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(step, dynamic=False)  # type: ignore[no-any-return]


def _check(x: Tensor, state: tuple[Tensor, ...], w_ih: Tensor, w_hh: Tensor, gates: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be time-major [T, B, I], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has no time steps (T = 0); sequences need at least one step")
    hid = w_hh.shape[1]
    if w_ih.shape != (gates * hid, x.shape[2]) or w_hh.shape != (gates * hid, hid):
        raise ValueError(
            f"weights must be weight_ih [{gates}H, I] = [{gates * hid}, {x.shape[2]}] and "
            f"weight_hh [{gates}H, H] = [{gates * hid}, {hid}], got {tuple(w_ih.shape)} and "
            f"{tuple(w_hh.shape)}"
        )
    for s in state:
        if s.shape != (x.shape[1], hid):
            raise ValueError(f"state must be [B, H] = [{x.shape[1]}, {hid}], got {tuple(s.shape)}")
    for name, t in (("weights", w_ih), *(("state", s) for s in state)):
        if t.dtype != x.dtype:
            raise ValueError(
                f"x is {x.dtype} but the {name} are {t.dtype}; convert one so that they match"
            )


def _has_ln(p: LSTMParams | GRUParams) -> bool:
    """Every LN gain and shift is set (the fused loops need them all)."""
    return all(getattr(p, f.name) is not None for f in fields(p) if f.name.startswith("ln_"))


def _impl(impl: str, auto: str = "hoisted") -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return auto if impl == "auto" else impl


def ln_lstm(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    params: LSTMParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
    impl: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Layer-normalised LSTM (paper supplement eqs. 20-22) over a time-major sequence.

    ``a_t = LN_hh(W_hh h_{t-1}) + LN_ih(W_ih x_t) + b_ih + b_hh``; ``c_t = σ(f) c_{t-1} + σ(i) tanh(g)``;
    ``h_t = σ(o) tanh(LN_c(c_t))``; the raw ``c_t`` is carried. ``layer_norm=False`` is ``nn.LSTM``.

    Args:
        x: ``[T, B, I]``.
        hx: ``(h0, c0)``, each ``[B, H]``.
        params: :class:`LSTMParams` of this layer/direction.
        layer_norm: apply the three LayerNorms.
        eps: LayerNorm epsilon.
        variant: ``"paper"`` or ``"per_gate"`` (TF1/Keras: each gate normalised alone, normalised
            cell carried).
        lengths: ``[B]`` valid steps per row (padded positions output 0 and hold the state).
        reverse: process the sequence backwards (the reverse direction of a bidirectional layer).
        impl: ``"auto" | "naive" | "hoisted" | "fused" | "compile"``.

    Returns:
        ``(out [T, B, H], (h_n [B, H], c_n [B, H]))``.
    """
    _check(x, hx, params.weight_ih, params.weight_hh, 4)
    check_variant(variant)
    path = _impl(impl, auto="fused")
    kw: dict[str, Any] = {
        "layer_norm": layer_norm, "eps": eps, "variant": variant, "lengths": lengths,
        "reverse": reverse,
    }  # fmt: skip
    if path == "naive":
        return naive_ln_lstm(x, hx, params, **kw)
    if path == "fused" and layer_norm and variant == "paper" and _has_ln(params):
        return fused_ln_lstm(x, hx, params, eps=eps, lengths=lengths, reverse=reverse)
    step = _compiled(_lstm_step) if path == "compile" else None
    return hoisted_ln_lstm(x, hx, params, step=step, **kw)


def ln_gru(
    x: Tensor,
    h0: Tensor,
    params: GRUParams,
    *,
    layer_norm: bool = True,
    eps: float = 1e-5,
    variant: str = "paper",
    lengths: Tensor | None = None,
    reverse: bool = False,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Layer-normalised GRU (official four-LN form) over a time-major sequence.

    ``r, z = σ(LN(W_i{r,z} x) + LN(W_h{r,z} h) + b_i + b_h)``;
    ``n = tanh(LN(W_in x) + b_in + r (LN(W_hn h) + b_hn))``; ``h_t = (1 - z) n + z h_{t-1}``.
    ``layer_norm=False`` is ``nn.GRU``.

    Args:
        x: ``[T, B, I]``.
        h0: ``[B, H]``.
        params: :class:`GRUParams`.
        layer_norm, eps, variant, lengths, reverse, impl: as :func:`ln_lstm`.

    Returns:
        ``(out [T, B, H], h_n [B, H])``.
    """
    _check(x, (h0,), params.weight_ih, params.weight_hh, 3)
    check_variant(variant)
    path = _impl(impl, auto="fused")
    kw: dict[str, Any] = {
        "layer_norm": layer_norm, "eps": eps, "variant": variant, "lengths": lengths,
        "reverse": reverse,
    }  # fmt: skip
    if path == "naive":
        return naive_ln_gru(x, h0, params, **kw)
    if path == "fused" and layer_norm and variant == "paper" and _has_ln(params):
        return fused_ln_gru(x, h0, params, eps=eps, lengths=lengths, reverse=reverse)
    step = _compiled(_gru_step) if path == "compile" else None
    return hoisted_ln_gru(x, h0, params, step=step, **kw)
