"""Dual-form TTT-Linear: one mini-batch = a few batched matmuls (same maths as the primal loop).

For a mini-batch with keys ``K``, queries ``Q`` [m, D], start weights ``W_s, b_s`` and the
per-token output gradients ``G = dl/dZ`` at ``Z = K W_sᵀ + b_s`` (closed form through the
LayerNorm), the weights seen by token ``t`` give
``W_t q_t + b_t = W_s q_t + b_s - Σ_{s<=t} eta_s g_s (k_s·q_t + 1)``, i.e.
``Zq = Q W_sᵀ + b_s - (tril(Q Kᵀ + 1) ⊙ eta_row) G``; the end weights are
``W_s - (eta ⊙ G)ᵀ K`` and ``b_s - Σ eta_s g_s``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchcraft.ops.ttt_linear.naive import LN_EPS, layer_norm_heads

__all__ = ["dual_ttt_linear", "ln_mse_grad"]


def ln_mse_grad(z: Tensor, target: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """``d/dz ||gamma ⊙ LN(z) + beta - target||²`` over the last dim. z: [..., D]."""
    d = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    var = z.var(-1, unbiased=False, keepdim=True)
    std = (var + LN_EPS).sqrt()
    xh = (z - mu) / std
    dy = 2.0 * (gamma * xh + beta - target)
    dxh = dy * gamma
    return (d * dxh - dxh.sum(-1, keepdim=True) - xh * (dxh * xh).sum(-1, keepdim=True)) / (d * std)


def dual_ttt_linear(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    w0: Tensor,
    b0: Tensor,
    gamma: Tensor,
    beta: Tensor,
    *,
    mini_batch: int = 16,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Same signature and result as :func:`naive_ttt_linear`, in dual (matmul) form."""
    bsz, t_len, h, d = q.shape
    n = bsz * h
    qf, kf, vf = (x.transpose(1, 2).reshape(n, t_len, d) for x in (q, k, v))  # [N, T, D]
    ef = eta.transpose(1, 2).reshape(n, t_len)  # [N, T]
    w = w0.unsqueeze(0).expand(bsz, h, d, d).reshape(n, d, d)
    b = b0.unsqueeze(0).expand(bsz, h, d).reshape(n, 1, d)
    g = gamma.unsqueeze(0).expand(bsz, h, d).reshape(n, 1, d)
    be = beta.unsqueeze(0).expand(bsz, h, d).reshape(n, 1, d)
    outs = []
    for s in range(0, t_len, mini_batch):
        e = min(s + mini_batch, t_len)
        qm, km, vm, em = qf[:, s:e], kf[:, s:e], vf[:, s:e], ef[:, s:e]  # [N, m, D], [N, m]
        m = e - s
        z = km @ w.mT + b  # [N, m, D]
        grad = ln_mse_grad(z, vm - km, g, be)  # [N, m, D]
        tril = torch.ones(m, m, dtype=q.dtype, device=q.device).tril()
        attn = (qm @ km.mT + 1.0) * tril * em[:, None, :]  # [N, m(t), m(s)]
        zq = qm @ w.mT + b - attn @ grad  # [N, m, D]
        outs.append(qm + layer_norm_heads(zq, g, be))
        eg = em[..., None] * grad  # [N, m, D]
        w = w - eg.mT @ km  # [N, D, D]
        b = b - eg.sum(1, keepdim=True)
    o = torch.cat(outs, dim=1).reshape(bsz, h, t_len, d).transpose(1, 2)
    return o, (w.reshape(bsz, h, d, d), b.reshape(bsz, h, d))
