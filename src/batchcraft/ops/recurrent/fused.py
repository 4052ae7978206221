"""LN-LSTM time loop with a hand-written backward through time (``impl="fused"``).

The input path is hoisted as in :mod:`.hoisted` (autograd handles that part); the recurrent loop
is one ``autograd.Function``: the forward runs without recording a graph and saves, per step, the
previous state, the normalised recurrent pre-activation, the gate activations and the normalised
cell; the backward walks the steps in reverse with the closed-form LayerNorm gradient
(``dx = r (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))``) and does the ``W_hh`` gradient as one GEMM over all steps.
This removes the per-op autograd bookkeeping of ~40 small ops per step. Paper variant only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["fused_ln_lstm_loop"]


def _ln_bwd(dy_hat: Tensor, xhat: Tensor, rstd: Tensor) -> Tensor:
    """Gradient of ``x̂ = (x - μ) r`` given ``dL/dx̂``: ``r (g - mean g - x̂ mean(g x̂))``."""
    return rstd * (
        dy_hat - dy_hat.mean(-1, keepdim=True) - xhat * (dy_hat * xhat).mean(-1, keepdim=True)
    )


class _FusedLNLSTMLoop(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        ln_hh_w: Tensor,
        ln_hh_b: Tensor,
        ln_c_w: Tensor,
        ln_c_b: Tensor,
        eps: float,
        mask: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        t_len, bsz, g4 = gi.shape
        hid = g4 // 4
        steps = list(range(t_len - 1, -1, -1)) if reverse else list(range(t_len))
        out = gi.new_zeros(t_len, bsz, hid)
        h_prev, c_prev = gi.new_empty(t_len, bsz, hid), gi.new_empty(t_len, bsz, hid)
        ghat, acts = gi.new_empty(t_len, bsz, g4), gi.new_empty(t_len, bsz, g4)
        chat, tcn = gi.new_empty(t_len, bsz, hid), gi.new_empty(t_len, bsz, hid)
        r_h, r_c = gi.new_empty(t_len, bsz, 1), gi.new_empty(t_len, bsz, 1)
        h, c = h0, c0
        w_t = w_hh.t()
        for t in steps:
            h_prev[t], c_prev[t] = h, c
            gh_hat, _, rh = torch.native_layer_norm(h @ w_t, (g4,), None, None, eps)  # [B, 4H]
            ghat[t], r_h[t] = gh_hat, rh
            a = torch.addcmul(gi[t] + ln_hh_b, gh_hat, ln_hh_w)
            act = acts[t]
            torch.sigmoid(a, out=act)
            act[:, 2 * hid : 3 * hid] = torch.tanh(a[:, 2 * hid : 3 * hid])
            i, f, g, o = act.chunk(4, dim=-1)
            c_new = torch.addcmul(f * c, i, g)
            c_hat, _, rc = torch.native_layer_norm(c_new, (hid,), None, None, eps)
            chat[t], r_c[t] = c_hat, rc
            tc = torch.tanh(torch.addcmul(ln_c_b, c_hat, ln_c_w))
            tcn[t] = tc
            h_new = o * tc
            if mask is None:
                h, c, out[t] = h_new, c_new, h_new
            else:
                m = mask[t]
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
                out[t] = torch.where(m, h_new, torch.zeros_like(h_new))
        ctx.save_for_backward(
            w_hh, ln_hh_w, ln_c_w, h_prev, c_prev, ghat, acts, chat, tcn, r_h, r_c
        )
        ctx.mask, ctx.steps = mask, steps
        return out, h, c

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, d_hn: Tensor, d_cn: Tensor
    ) -> tuple[Tensor | None, ...]:
        w_hh, ln_hh_w, ln_c_w, h_prev, c_prev, ghat, acts, chat, tcn, r_h, r_c = ctx.saved_tensors
        mask: Tensor | None = ctx.mask
        hid = h_prev.shape[-1]
        d_gi = torch.empty_like(acts)
        d_gh = torch.empty_like(acts)
        d_wc, d_bc = torch.zeros_like(ln_c_w), torch.zeros_like(ln_c_w)
        dh_next, dc_next = d_hn.clone(), d_cn.clone()
        for t in reversed(ctx.steps):
            dh = d_out[t] + dh_next
            dc_in = dc_next
            if mask is not None:
                m = mask[t].to(dh.dtype)
                dh_pass, dc_pass = dh_next * (1 - m), dc_next * (1 - m)
                dh, dc_in = (d_out[t] + dh_next) * m, dc_next * m
            i, f, g, o = acts[t].chunk(4, dim=-1)
            tc = tcn[t]
            dcn = dh * o * (1 - tc * tc)
            d_wc += (dcn * chat[t]).sum(0)
            d_bc += dcn.sum(0)
            dc = dc_in + _ln_bwd(dcn * ln_c_w, chat[t], r_c[t])
            da = d_gi[t]
            da[:, :hid] = dc * g * i * (1 - i)
            da[:, hid : 2 * hid] = dc * c_prev[t] * f * (1 - f)
            da[:, 2 * hid : 3 * hid] = dc * i * (1 - g * g)
            da[:, 3 * hid :] = dh * tc * o * (1 - o)
            dgh = _ln_bwd(da * ln_hh_w, ghat[t], r_h[t])
            d_gh[t] = dgh
            dh_next, dc_next = dgh @ w_hh, dc * f
            if mask is not None:
                dh_next, dc_next = dh_next + dh_pass, dc_next + dc_pass
        g4 = acts.shape[-1]
        d_w = d_gh.reshape(-1, g4).t() @ h_prev.reshape(-1, hid)  # one GEMM over all steps
        d_whh = (d_gi * ghat).sum((0, 1))
        d_bhh = d_gi.sum((0, 1))
        return d_gi, dh_next, dc_next, d_w, d_whh, d_bhh, d_wc, d_bc, None, None, None


def fused_ln_lstm_loop(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    ln_hh_w: Tensor,
    ln_hh_b: Tensor,
    ln_c_w: Tensor,
    ln_c_b: Tensor,
    eps: float,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Recurrent part of the paper LN-LSTM with a manual backward.

    Args:
        gi: ``[T, B, 4H]`` hoisted ``LN_ih(W_ih x) + b_ih + b_hh``.
        h0, c0: ``[B, H]``.
        w_hh: ``[4H, H]``; ln_hh_w, ln_hh_b: ``[4H]``; ln_c_w, ln_c_b: ``[H]``.
        eps: LN epsilon.
        lengths: ``[B]`` valid steps or ``None``.
        reverse: run backwards in time.

    Returns:
        ``(out [T, B, H], h_n, c_n)``.
    """
    mask = None
    if lengths is not None:
        steps = torch.arange(gi.shape[0], device=gi.device).view(-1, 1, 1)
        mask = steps < lengths.to(gi.device).view(1, -1, 1)  # [T, B, 1]
    out, h, c = _FusedLNLSTMLoop.apply(
        gi, h0, c0, w_hh, ln_hh_w, ln_hh_b, ln_c_w, ln_c_b, eps, mask, reverse
    )
    return out, h, c
