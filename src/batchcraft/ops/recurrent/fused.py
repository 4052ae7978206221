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

__all__ = ["fused_ln_gru_loop", "fused_ln_lstm_loop"]


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


class _FusedLNGRULoop(torch.autograd.Function):
    """LN-GRU recurrent loop (four-LN form) with a hand-written backward through time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        w_rz: Tensor,
        b_rz: Tensor,
        w_n: Tensor,
        b_n: Tensor,
        eps: float,
        mask: Tensor | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        t_len, bsz, g3 = gi.shape
        hid = g3 // 3
        steps = list(range(t_len - 1, -1, -1)) if reverse else list(range(t_len))
        out = gi.new_zeros(t_len, bsz, hid)
        h_prev, ghat, acts = (
            gi.new_empty(t_len, bsz, hid),
            gi.new_empty(t_len, bsz, g3),
            gi.new_empty(t_len, bsz, g3),
        )
        gh_n_all = gi.new_empty(t_len, bsz, hid)
        r_rz, r_n = gi.new_empty(t_len, bsz, 1), gi.new_empty(t_len, bsz, 1)
        h = h0
        w_t = w_hh.t()
        for t in steps:
            h_prev[t] = h
            gh = h @ w_t  # [B, 3H]
            hat_rz, _, rr = torch.native_layer_norm(gh[:, : 2 * hid], (2 * hid,), None, None, eps)
            hat_n, _, rn = torch.native_layer_norm(gh[:, 2 * hid :], (hid,), None, None, eps)
            ghat[t, :, : 2 * hid], ghat[t, :, 2 * hid :] = hat_rz, hat_n
            r_rz[t], r_n[t] = rr, rn
            act = acts[t]
            torch.sigmoid(
                gi[t, :, : 2 * hid] + torch.addcmul(b_rz, hat_rz, w_rz), out=act[:, : 2 * hid]
            )
            gh_n = torch.addcmul(b_n, hat_n, w_n)
            gh_n_all[t] = gh_n
            r, z = act[:, :hid], act[:, hid : 2 * hid]
            n = torch.tanh(torch.addcmul(gi[t, :, 2 * hid :], r, gh_n))
            act[:, 2 * hid :] = n
            h_new = torch.addcmul(n, z, h - n)
            if mask is None:
                h, out[t] = h_new, h_new
            else:
                m = mask[t]
                h = torch.where(m, h_new, h)
                out[t] = torch.where(m, h_new, torch.zeros_like(h_new))
        ctx.save_for_backward(w_hh, w_rz, w_n, h_prev, ghat, acts, gh_n_all, r_rz, r_n)
        ctx.mask, ctx.steps = mask, steps
        return out, h

    @staticmethod
    def backward(ctx: Any, d_out: Tensor, d_hn: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w_hh, w_rz, w_n, h_prev, ghat, acts, gh_n_all, r_rz, r_n = ctx.saved_tensors
        mask: Tensor | None = ctx.mask
        hid = h_prev.shape[-1]
        d_gi = torch.empty_like(acts)
        d_ghl = torch.empty_like(acts)  # gradient w.r.t. the LN outputs (for dγ, dβ)
        d_gh = torch.empty_like(acts)  # gradient w.r.t. W_hh h (for dW_hh)
        dh_next = d_hn.clone()
        for t in reversed(ctx.steps):
            dh = d_out[t] + dh_next
            if mask is not None:
                m = mask[t].to(dh.dtype)
                dh_pass = dh_next * (1 - m)
                dh = dh * m
            r, z, n = acts[t, :, :hid], acts[t, :, hid : 2 * hid], acts[t, :, 2 * hid :]
            hp = h_prev[t]
            dn_pre = dh * (1 - z) * (1 - n * n)
            dz_pre = dh * (hp - n) * z * (1 - z)
            dr_pre = dn_pre * gh_n_all[t] * r * (1 - r)
            dgi = d_gi[t]
            dgi[:, :hid], dgi[:, hid : 2 * hid], dgi[:, 2 * hid :] = dr_pre, dz_pre, dn_pre
            dl = d_ghl[t]
            dl[:, : 2 * hid], dl[:, 2 * hid :] = dgi[:, : 2 * hid], dn_pre * r
            dg = d_gh[t]
            dg[:, : 2 * hid] = _ln_bwd(dl[:, : 2 * hid] * w_rz, ghat[t, :, : 2 * hid], r_rz[t])
            dg[:, 2 * hid :] = _ln_bwd(dl[:, 2 * hid :] * w_n, ghat[t, :, 2 * hid :], r_n[t])
            dh_next = torch.addmm(dh * z, dg, w_hh)
            if mask is not None:
                dh_next = dh_next + dh_pass
        g3 = acts.shape[-1]
        d_w = d_gh.reshape(-1, g3).t() @ h_prev.reshape(-1, hid)
        dwl = (d_ghl * ghat).sum((0, 1))
        dbl = d_ghl.sum((0, 1))
        return (d_gi, dh_next, d_w, dwl[: 2 * hid], dbl[: 2 * hid], dwl[2 * hid :], dbl[2 * hid :],
                None, None, None)  # fmt: skip


def fused_ln_gru_loop(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    ln_rz_w: Tensor,
    ln_rz_b: Tensor,
    ln_n_w: Tensor,
    ln_n_b: Tensor,
    eps: float,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """Recurrent part of the LN-GRU with a manual backward.

    Args:
        gi: ``[T, B, 3H]`` hoisted input path with ``b_ih`` and ``b_h{r,z}`` in.
        h0: ``[B, H]``.
        w_hh: ``[3H, H]``; ln_rz_w, ln_rz_b: ``[2H]``; ln_n_w: ``[H]``; ln_n_b: ``[H]``, the LN shift
            plus ``b_hn`` (both are added after the LN of ``W_hn h``).
        eps, lengths, reverse: as :func:`fused_ln_lstm_loop`.

    Returns:
        ``(out [T, B, H], h_n)``.
    """
    mask = None
    if lengths is not None:
        steps = torch.arange(gi.shape[0], device=gi.device).view(-1, 1, 1)
        mask = steps < lengths.to(gi.device).view(1, -1, 1)  # [T, B, 1]
    out, h = _FusedLNGRULoop.apply(
        gi, h0, w_hh, ln_rz_w, ln_rz_b, ln_n_w, ln_n_b, eps, mask, reverse
    )
    return out, h
