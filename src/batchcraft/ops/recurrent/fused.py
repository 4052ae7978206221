"""LN-LSTM / LN-GRU with a hand-written backward through time (``impl="fused"``, the default).

At RNN sizes (``B·4H`` of 10^4-10^5 values per step) an eager op costs a few microseconds
whatever it does, so this path is built to issue few ops, make few passes over memory, and
avoid ``torch.tanh`` (on CPU it costs ~5x ``torch.sigmoid``):

* **Input path** (hoisted, autograd): one GEMM and one ``layer_norm`` call for all steps, with
  ``b_ih``, ``b_hh`` and the LN shift of the recurrent path folded into the LN shift (all are
  added to the same pre-activation).
* **tanh through sigmoid**, exactly: ``tanh(v) = 1 - 2σ(-2v)``. The factor -2 is folded into
  the LN gains/shifts that feed each tanh (the LSTM's ``g`` slice and cell LN, the GRU's
  candidate), so one ``sigmoid`` call covers all four LSTM gates and the products with a tanh
  become single ``addcmul`` calls (``i·tanh(g) = i - 2·i·σ(-2g)``, ``o·tanh(y) = o - 2·o·σ(-2y)``).
* **Forward loop** (9 ops/step for the LSTM, 10 for the GRU, GEMM included): the recurrent GEMM
  writes into a saved buffer, gains are applied by ``native_layer_norm``, gates / cell / output go
  into saved buffers with ``out=``. LN statistics and normalised values are not saved: the
  backward recomputes them (same rows, same kernel).
* **Backward loop**: every factor that does not depend on the incoming gradient (gate
  derivatives, ``γ·r`` of each LN, the normalised values) is computed for a block of steps in a few
  batched ops, with blocks small enough to stay in cache; the sequential part is 9 ops/step (LSTM)
  or 6 (GRU) besides the recurrent GEMM. The LN backward ``dx = q - mean(q) - x̂·mean(q·x̂)``
  (``q = r·γ·dy``) is a rank-2 correction done as one ``bmm`` and one ``baddbmm`` with the basis
  ``U = [1, x̂]/sqrt(F)``: ``dx = q - (q Uᵀ) U``. ``dW_hh`` is one GEMM over all steps.

``reverse`` processes the steps backwards (buffers are kept in processing order); ``lengths`` hold
the state of finished rows and output 0, as ``torch.nn.LSTM`` does with packed input. Paper
variant with all LN parameters only. The reference is :mod:`.naive`; the tests check outputs,
final states and every gradient against it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from batchcraft.ops.recurrent.params import GRUParams, LSTMParams

__all__ = ["fused_ln_gru", "fused_ln_lstm"]

# values per [steps, B, G·H] tensor in one backward block: small enough that a block's factors
# stay in a core's cache, large enough to amortise the per-op overhead (tests lower it)
BLOCK_ELEMS = 1 << 17


def _block_size(t_len: int, row: int) -> int:
    return max(1, min(t_len, BLOCK_ELEMS // max(row, 1)))


def _prev(states: Tensor, init: Tensor, t0: int, t1: int) -> Tensor:
    """State entering steps ``t0..t1-1`` (processing order): ``[t1 - t0, B, H]``."""
    if t0 > 0:
        return states[t0 - 1 : t1 - 1]
    return torch.cat([init.unsqueeze(0), states[: t1 - 1]])


def _ln_basis(xhat: Tensor, size: int) -> Tensor:
    """``[..., F] -> [..., 2, F]``: rows ``1/sqrt(size)`` and ``x̂/sqrt(size)``."""
    u = xhat.new_empty(*xhat.shape[:-1], 2, xhat.shape[-1])
    u[..., 0, :] = 1.0 / math.sqrt(size)
    torch.mul(xhat, 1.0 / math.sqrt(size), out=u[..., 1, :])
    return u


def _ln_back(q: Tensor, u: Tensor, out: Tensor | None = None) -> Tensor:
    """LayerNorm backward ``q - (q Uᵀ) U`` per row: ``q: [N, 1, F]``, ``u: [N, 2, F]``."""
    return torch.baddbmm(q, torch.bmm(q, u.mT), u, alpha=-1, out=out)


def _masks(
    lengths: Tensor | None, t_len: int, reverse: bool, like: Tensor
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(bool, float m, float 1 - m)`` step masks ``[T, B, 1]`` in processing order."""
    if lengths is None:
        return None
    steps = torch.arange(t_len, device=like.device).view(-1, 1, 1)
    m = steps < lengths.to(like.device).view(1, -1, 1)
    if reverse:
        m = m.flip(0)
    return m, m.to(like.dtype), (~m).to(like.dtype)


class _LNLSTMLoop(torch.autograd.Function):
    """Recurrent part with every tanh written as ``tanh(v) = 1 - 2σ(-2v)`` (the ``-2`` is folded into
    ``gi``'s ``g`` slice and the gains/shifts): ``a = LN(W_hh h; γ_hh) + gi``; ``i, f, u, o = σ(a)``;
    ``c = f c + i (1 - 2u)``; ``h = o (1 - 2σ(LN(c; γ_c, β_c)))``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        ln_hh_w: Tensor,
        ln_c_w: Tensor,
        ln_c_b: Tensor,
        eps: float,
        masks: tuple[Tensor, Tensor, Tensor] | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        t_len, bsz, g4 = gi.shape
        hid = g4 // 4
        gh = gi.new_empty(t_len, bsz, g4)  # raw W_hh h_{t-1}, processing order
        act = gi.new_empty(t_len, bsz, g4)  # σ(i), σ(f), σ(-2g), σ(o)
        uc = gi.new_empty(t_len, bsz, hid)  # σ(-2 LN_c(c_t))
        cs = gi.new_empty(t_len, bsz, hid)  # cell state after each step
        hs = gi.new_empty(t_len, bsz, hid)  # hidden state after each step
        w_t = w_hh.t()
        gis = gi.unbind(0)[::-1] if reverse else gi.unbind(0)  # processing order
        gh_k, act_k, uc_k, cs_k, hs_k = (b.unbind(0) for b in (gh, act, uc, cs, hs))
        i_k, f_k, u_k, o_k = (g.unbind(0) for g in act.chunk(4, 2))  # per-step gate views
        h, c = h0, c0
        for k in range(t_len):
            a = torch.native_layer_norm(torch.mm(h, w_t, out=gh_k[k]), (g4,), ln_hh_w, None, eps)[0]
            torch.sigmoid(a.add_(gis[k]), out=act_k[k])
            i, f, o = i_k[k], f_k[k], o_k[k]
            ig = torch.addcmul(i, i, u_k[k], value=-2.0)  # i·tanh(g)
            c_new = torch.addcmul(ig, f, c, out=cs_k[k] if masks is None else None)
            y = torch.native_layer_norm(c_new, (hid,), ln_c_w, ln_c_b, eps)[0]
            u_c = torch.sigmoid(y, out=uc_k[k])
            h_new = torch.addcmul(o, o, u_c, value=-2.0, out=hs_k[k] if masks is None else None)
            if masks is None:
                h, c = h_new, c_new
            else:  # finished rows hold their state
                h = torch.where(masks[0][k], h_new, h, out=hs_k[k])
                c = torch.where(masks[0][k], c_new, c, out=cs_k[k])
        ctx.save_for_backward(w_hh, ln_hh_w, ln_c_w, h0, c0, gh, act, uc, cs, hs)
        ctx.eps, ctx.masks, ctx.reverse = eps, masks, reverse
        out = hs if masks is None else hs * masks[1]
        return (out.flip(0) if reverse else out), h.clone(), c.clone()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, d_hn: Tensor, d_cn: Tensor
    ) -> tuple[Tensor | None, ...]:
        w_hh, ln_hh_w, ln_c_w, h0, c0, gh, act, uc, cs, hs = ctx.saved_tensors
        eps, masks = ctx.eps, ctx.masks
        t_len, bsz, g4 = act.shape
        hid = g4 // 4
        d_outs = d_out.unbind(0)[::-1] if ctx.reverse else d_out.unbind(0)  # processing order
        d_gi = torch.empty_like(act)
        d_lnh_w = torch.zeros_like(ln_hh_w)
        d_lnc_w, d_lnc_b = torch.zeros_like(ln_c_w), torch.zeros_like(ln_c_w)
        dh_all, dc_all = torch.empty_like(hs), torch.empty_like(cs)  # d h_t, d c_t (new values)
        dh_k, dc_k = dh_all.unbind(0), dc_all.unbind(0)
        f_k = act[:, :, hid : 2 * hid].unbind(0)
        m_k = nm_k = d_outs  # placeholders, replaced when there are masks
        if masks is not None:
            m_k, nm_k = masks[1].unbind(0), masks[2].unbind(0)
        carry_h, carry_c = d_hn, d_cn  # gradient w.r.t. the state after the current step
        if masks is None:
            torch.add(d_outs[-1], d_hn, out=dh_k[-1])
        q_h = act.new_empty(bsz, 4, hid)
        q_h3, q_ho, q_hf = q_h[:, :3], q_h[:, 3], q_h.view(bsz, 1, g4)
        dgh_all = torch.empty_like(act)  # gradient of W_hh h_{t-1}, for one dW_hh GEMM at the end
        blk = _block_size(t_len, bsz * g4)
        for t1 in range(t_len, 0, -blk):
            t0 = max(0, t1 - blk)
            n = t1 - t0
            # ---- factors of steps t0..t1-1 that do not depend on the incoming gradient
            ghat, _, r_h = torch.native_layer_norm(gh[t0:t1], (g4,), None, None, eps)
            chat, _, r_c = torch.native_layer_norm(cs[t0:t1], (hid,), None, None, eps)
            a_b = act[t0:t1]
            i, _, u, o = a_b.chunk(4, 2)
            u_c = uc[t0:t1]
            k_gate = torch.addcmul(a_b, a_b, a_b, value=-1.0).view(n, bsz, 4, hid)  # σ'
            k_gate[:, :, 0].mul_(torch.rsub(u, 1.0, alpha=2.0))  # d a_i = dc·tanh(g)·σ'(i)
            k_gate[:, :, 1].mul_(_prev(cs, c0, t0, t1))  # d a_f = dc·c_{t-1}·σ'(f)
            k_gate[:, :, 2].mul_(i).mul_(-2.0)  # d a_g = dc·i·(-2σ'(-2g))
            k_gate[:, :, 3].mul_(torch.rsub(u_c, 1.0, alpha=2.0))  # d a_o = dh·tanh(LN_c c)·σ'(o)
            k_cn = torch.addcmul(u_c, u_c, u_c, value=-1.0).mul_(o)  # dh -> -½ d(pre-σ of LN_c)
            k_a = (k_cn * (-2.0 * ln_c_w)).mul_(r_c)  # dh -> q of the LN_c backward
            k_b = (k_gate.view(n, bsz, g4) * ln_hh_w).mul_(r_h).view(n, bsz, 4, hid)
            u_h, u_cb = _ln_basis(ghat, g4), _ln_basis(chat, hid)  # [n, B, 2, 4H], [n, B, 2, H]
            dgh = dgh_all[t0:t1]
            k_a_k, k_b3, k_bo = k_a.unbind(0), k_b[:, :, :3].unbind(0), k_b[:, :, 3].unbind(0)
            u_h_k, u_c_k = u_h.unbind(0), u_cb.unbind(0)
            u_h_t, u_c_t = u_h.mT.unbind(0), u_cb.mT.unbind(0)
            dgh_k = dgh.unsqueeze(2).unbind(0)
            # ---- sequential part
            for k in range(n - 1, -1, -1):
                t = t0 + k
                if masks is None:
                    dh = dh_k[t]
                else:
                    dh = torch.mul(d_outs[t] + carry_h, m_k[t], out=dh_k[t])
                q_c = torch.mul(dh, k_a_k[k]).unsqueeze(1)
                dx = torch.baddbmm(q_c, torch.bmm(q_c, u_c_t[k]), u_c_k[k], alpha=-1).squeeze(1)
                if masks is not None:
                    dc = torch.addcmul(dx, carry_c, m_k[t], out=dc_k[t])
                elif t == t_len - 1:
                    dc = torch.add(dx, d_cn, out=dc_k[t])
                else:
                    dc = torch.addcmul(dx, dc_k[t + 1], f_k[t + 1], out=dc_k[t])
                torch.mul(dc.unsqueeze(1), k_b3[k], out=q_h3)
                torch.mul(dh, k_bo[k], out=q_ho)
                dg = torch.baddbmm(
                    q_hf, torch.bmm(q_hf, u_h_t[k]), u_h_k[k], alpha=-1, out=dgh_k[k]
                )
                if masks is not None:
                    carry_h = torch.addmm(carry_h * nm_k[t], dg.squeeze(1), w_hh)
                    carry_c = torch.addcmul(carry_c * nm_k[t], dc, f_k[t])
                elif t > 0:
                    torch.addmm(d_outs[t - 1], dg.squeeze(1), w_hh, out=dh_k[t - 1])
                else:
                    carry_h, carry_c = dg.squeeze(1) @ w_hh, dc * f_k[0]
            # ---- batched gradients of the block
            dh_b, dc_b = dh_all[t0:t1], dc_all[t0:t1]
            da = d_gi[t0:t1].view(n, bsz, 4, hid)
            torch.mul(dc_b.unsqueeze(2), k_gate[:, :, :3], out=da[:, :, :3])
            torch.mul(dh_b, k_gate[:, :, 3], out=da[:, :, 3])
            d_lnh_w += (d_gi[t0:t1] * ghat).sum((0, 1))
            d_pc = dh_b * k_cn  # -½ the gradient of the LN_c output
            d_lnc_w -= 2.0 * (d_pc * chat).sum((0, 1))
            d_lnc_b -= 2.0 * d_pc.sum((0, 1))
        d_w = dgh_all.view(-1, g4).t() @ _prev(hs, h0, 0, t_len).reshape(-1, hid)  # [4H, H]
        if ctx.reverse:
            d_gi = d_gi.flip(0)
        return d_gi, carry_h, carry_c, d_w, d_lnh_w, d_lnc_w, d_lnc_b, None, None, None


class _LNGRULoop(torch.autograd.Function):
    """Recurrent part with ``tanh(v) = 1 - 2σ(-2v)`` (the ``-2`` folded into ``gi_n``, ``γ_n``, ``β_n``):
    ``r, z = σ(LN(W_h{r,z} h; γ_rz) + gi_rz)``; ``n = 1 - 2σ(gi_n + r LN(W_hn h; γ_n, β_n))``;
    ``h = n + z (h - n)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi_rz: Tensor,
        gi_n: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        w_rz: Tensor,
        w_n: Tensor,
        b_n: Tensor,
        eps: float,
        masks: tuple[Tensor, Tensor, Tensor] | None,
        reverse: bool,
    ) -> tuple[Tensor, Tensor]:
        t_len, bsz, hid = gi_n.shape
        gh = gi_n.new_empty(t_len, bsz, 3 * hid)  # raw W_hh h_{t-1}, processing order
        act = gi_n.new_empty(t_len, bsz, 3 * hid)  # r, z, σ(-2·candidate)
        hs = gi_n.new_empty(t_len, bsz, hid)
        w_t = w_hh.t()
        gi_rz_k, gi_n_k = gi_rz.unbind(0), gi_n.unbind(0)
        if reverse:
            gi_rz_k, gi_n_k = gi_rz_k[::-1], gi_n_k[::-1]
        gh_k, hs_k = gh.unbind(0), hs.unbind(0)
        rz_k, n_k = act[:, :, : 2 * hid].unbind(0), act[:, :, 2 * hid :].unbind(0)
        ghrz_k, ghn_k = gh[:, :, : 2 * hid].unbind(0), gh[:, :, 2 * hid :].unbind(0)
        h = h0
        for k in range(t_len):
            torch.mm(h, w_t, out=gh_k[k])
            a = torch.native_layer_norm(ghrz_k[k], (2 * hid,), w_rz, None, eps)[0]
            r, z = torch.sigmoid(a.add_(gi_rz_k[k]), out=rz_k[k]).chunk(2, 1)
            y_n = torch.native_layer_norm(ghn_k[k], (hid,), w_n, b_n, eps)[0]
            u = torch.sigmoid(y_n.mul_(r).add_(gi_n_k[k]), out=n_k[k])
            cand = torch.rsub(u, 1.0, alpha=2.0)  # tanh of the candidate pre-activation
            if masks is None:
                h = torch.lerp(cand, h, z, out=hs_k[k])
            else:
                h = torch.where(masks[0][k], torch.lerp(cand, h, z), h, out=hs_k[k])
        ctx.save_for_backward(w_hh, w_rz, w_n, b_n, h0, gh, act, hs)
        ctx.eps, ctx.masks, ctx.reverse = eps, masks, reverse
        out = hs if masks is None else hs * masks[1]
        return (out.flip(0) if reverse else out), h.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_out: Tensor, d_hn: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w_hh, w_rz, w_n, b_n, h0, gh, act, hs = ctx.saved_tensors
        eps, masks = ctx.eps, ctx.masks
        t_len, bsz, g3 = act.shape
        hid = g3 // 3
        d_outs = d_out.unbind(0)[::-1] if ctx.reverse else d_out.unbind(0)  # processing order
        d_gi = torch.empty_like(act)
        d_w_rz, d_w_n, d_b_n = torch.zeros_like(w_rz), torch.zeros_like(w_n), torch.zeros_like(b_n)
        dh_all = torch.empty_like(hs)
        dh_k, z_k = dh_all.unbind(0), act[:, :, hid : 2 * hid].unbind(0)
        m_k = nm_k = d_outs  # placeholders, replaced when there are masks
        if masks is not None:
            m_k, nm_k = masks[1].unbind(0), masks[2].unbind(0)
        carry_h = d_hn
        if masks is None:
            torch.add(d_outs[-1], d_hn, out=dh_k[-1])
        # the three H-chunks (r, z | n): r and z share one LN (2H), n has its own (H); the
        # projections q·Uᵀ of each chunk are summed within its LN group by this matrix
        group = act.new_tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        w_q = torch.cat([w_rz, w_n]).view(3, hid)
        scale = act.new_tensor([2 * hid, 2 * hid, hid]).rsqrt().view(3, 1)
        dgh_all = torch.empty_like(act)  # gradient of W_hh h_{t-1}, for one dW_hh GEMM at the end
        blk = _block_size(t_len, bsz * g3)
        for t1 in range(t_len, 0, -blk):
            t0 = max(0, t1 - blk)
            n_b = t1 - t0
            hat_rz, _, r_rz = torch.native_layer_norm(
                gh[t0:t1, :, : 2 * hid], (2 * hid,), None, None, eps
            )
            hat_n, _, r_n = torch.native_layer_norm(
                gh[t0:t1, :, 2 * hid :], (hid,), None, None, eps
            )
            r, z, u = act[t0:t1].chunk(3, 2)
            y_n = torch.addcmul(b_n, hat_n, w_n)
            h_prev = _prev(hs, h0, t0, t1)
            # dh -> d gi of (r, z, n); the candidate is 1 - 2σ(p): dn/dp = -2σ'(p)
            k_gate = torch.addcmul(act[t0:t1], act[t0:t1], act[t0:t1], value=-1.0)  # σ'
            k_gate = k_gate.view(n_b, bsz, 3, hid)
            k_p = k_gate[:, :, 2].mul_(z - 1.0).mul_(2.0)  # (1 - z)·(-2σ'(p))
            k_gate[:, :, 0].mul_(k_p).mul_(y_n)
            k_gate[:, :, 1].mul_(h_prev - torch.rsub(u, 1.0, alpha=2.0))  # (h_{t-1} - n)·σ'(z)
            # dh -> q = r·γ·dy of the two LN inputs (the dy of the n-LN is dp·r)
            k_q = k_gate * w_q
            k_q[:, :, 2].mul_(r).mul_(r_n)
            k_q[:, :, :2].mul_(r_rz.unsqueeze(-1))
            u_b = hat_rz.new_empty(n_b, bsz, 3, 2, hid)
            u_b[..., 0, :] = scale
            torch.mul(hat_rz.view(n_b, bsz, 2, hid), scale[:2], out=u_b[:, :, :2, 1])
            torch.mul(hat_n, scale[2], out=u_b[:, :, 2, 1])
            u_b = u_b.view(n_b, bsz * 3, 2, hid)
            dgh = dgh_all[t0:t1]
            k_q_k, u_k, u_t = k_q.unbind(0), u_b.unbind(0), u_b.mT.unbind(0)
            dgh_k = dgh.view(n_b, bsz * 3, 1, hid).unbind(0)
            for k in range(n_b - 1, -1, -1):
                t = t0 + k
                if masks is None:
                    dh = dh_k[t]
                else:
                    dh = torch.mul(d_outs[t] + carry_h, m_k[t], out=dh_k[t])
                q = torch.mul(dh.unsqueeze(1), k_q_k[k]).view(bsz * 3, 1, hid)
                proj = torch.matmul(group, torch.bmm(q, u_t[k]).view(bsz, 3, 2))
                dg = torch.baddbmm(q, proj.view(bsz * 3, 1, 2), u_k[k], alpha=-1, out=dgh_k[k])
                dg = dg.view(bsz, g3)
                if masks is not None:
                    carry_h = torch.addcmul(carry_h * nm_k[t], dh, z_k[t])
                    carry_h = torch.addmm(carry_h, dg, w_hh)
                elif t > 0:
                    base = torch.addcmul(d_outs[t - 1], dh, z_k[t])
                    torch.addmm(base, dg, w_hh, out=dh_k[t - 1])
                else:
                    carry_h = torch.addmm(dh * z_k[0], dg, w_hh)
            dgi = d_gi[t0:t1].view(n_b, bsz, 3, hid)
            torch.mul(dh_all[t0:t1].unsqueeze(2), k_gate, out=dgi)
            d_w_rz += (d_gi[t0:t1, :, : 2 * hid] * hat_rz).sum((0, 1))
            d_yn = dgi[:, :, 2] * r
            d_w_n += (d_yn * hat_n).sum((0, 1))
            d_b_n += d_yn.sum((0, 1))
        d_w = dgh_all.view(-1, g3).t() @ _prev(hs, h0, 0, t_len).reshape(-1, hid)  # [3H, H]
        if ctx.reverse:
            d_gi = d_gi.flip(0)
        d_rz, d_n = d_gi.split([2 * hid, hid], 2)
        return d_rz, d_n, carry_h, d_w, d_w_rz, d_w_n, d_b_n, None, None, None


def _need(t: Tensor | None) -> Tensor:
    """An LN parameter the fused loops require (the dispatcher checks that all are set)."""
    if t is None:
        raise ValueError("the fused LN-RNN path needs every LayerNorm gain and shift")
    return t


def _sum(*ts: Tensor | None) -> Tensor:
    """Sum of the given shifts (the LN shift is always among them)."""
    present = [t for t in ts if t is not None]
    return sum(present[1:], present[0])


def fused_ln_lstm(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    p: LSTMParams,
    *,
    eps: float,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Paper LN-LSTM, hoisted input path + fused loop; same contract as :func:`.naive.naive_ln_lstm`.

    Args:
        x: ``[T, B, I]``.
        hx: ``(h0, c0)``, each ``[B, H]``.
        p: parameters with every LN gain and shift set.
        eps: LN epsilon.
        lengths: ``[B]`` valid steps or ``None``.
        reverse: run backwards in time.

    Returns:
        ``(out [T, B, H], (h_n, c_n))``.
    """
    hid = p.hidden_size
    # ×(-2) on the g slice: tanh(g) = 1 - 2σ(-2g), so one sigmoid covers all four gates
    g_scale = x.new_tensor([1.0, 1.0, -2.0, 1.0]).repeat_interleave(hid)
    # b_ih, b_hh and the shift of LN_hh are added to the same pre-activation as LN_ih's shift
    shift = _sum(_need(p.ln_ih_bias), p.bias_ih, p.bias_hh, _need(p.ln_hh_bias)) * g_scale
    gain = _need(p.ln_ih_weight) * g_scale
    gi = F.layer_norm(F.linear(x, p.weight_ih), (4 * hid,), gain, shift, eps)  # [T, B, 4H]
    out, h, c = _LNLSTMLoop.apply(
        gi, hx[0], hx[1], p.weight_hh, _need(p.ln_hh_weight) * g_scale,
        _need(p.ln_c_weight) * -2.0, _need(p.ln_c_bias) * -2.0, eps,
        _masks(lengths, x.shape[0], reverse, x), reverse,
    )  # fmt: skip
    return out, (h, c)


def fused_ln_gru(
    x: Tensor,
    h0: Tensor,
    p: GRUParams,
    *,
    eps: float,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """Paper LN-GRU (four LNs), hoisted input path + fused loop; contract of :func:`.naive.naive_ln_gru`.

    Args:
        x: ``[T, B, I]``.
        h0: ``[B, H]``.
        p: parameters with every LN gain and shift set.
        eps, lengths, reverse: as :func:`fused_ln_lstm`.

    Returns:
        ``(out [T, B, H], h_n [B, H])``.
    """
    hid = p.hidden_size
    b_ih = (None, None) if p.bias_ih is None else p.bias_ih.split([2 * hid, hid])
    b_hh = (None, None) if p.bias_hh is None else p.bias_hh.split([2 * hid, hid])
    w_rz, w_n = p.weight_ih.split([2 * hid, hid])
    # b_i{r,z}, b_h{r,z} and the shift of LN_hh_rz are added next to LN_ih_rz's shift
    shift_rz = _sum(_need(p.ln_ih_rz_bias), b_ih[0], b_hh[0], _need(p.ln_hh_rz_bias))
    gi_rz = F.layer_norm(F.linear(x, w_rz), (2 * hid,), p.ln_ih_rz_weight, shift_rz, eps)
    # ×(-2) on the candidate: tanh(v) = 1 - 2σ(-2v)
    shift_n = _sum(_need(p.ln_ih_n_bias), b_ih[1]) * -2.0
    gi_n = F.layer_norm(F.linear(x, w_n), (hid,), _need(p.ln_ih_n_weight) * -2.0, shift_n, eps)
    b_n = _sum(_need(p.ln_hh_n_bias), b_hh[1]) * -2.0  # b_hn sits inside r ⊙ (...), with β_hh_n
    out, h = _LNGRULoop.apply(
        gi_rz, gi_n, h0, p.weight_hh, _need(p.ln_hh_rz_weight),
        _need(p.ln_hh_n_weight) * -2.0, b_n, eps,
        _masks(lengths, x.shape[0], reverse, x), reverse,
    )  # fmt: skip
    return out, h
