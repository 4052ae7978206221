"""Reference TTT-Linear with mini-batch gradient descent (primal form, per-token loop).

Sun et al., "Learning to (Learn at Test Time)", the small-chunk baseline of LaCT.
Per head: ``f(x) = W x + b`` with ``W [D, D]``; inner loss
``l_t(W, b) = ||LN(W k_t + b) - (v_t - k_t)||^2`` (per-head LayerNorm with ``gamma``, ``beta``).
Inside a mini-batch every token uses the gradients taken at the mini-batch start:
``W_t = W_0 - sum_{s <= t} eta_s grad l_s(W_0)``; output ``o_t = q_t + LN(W_t q_t + b_t)``; the
next mini-batch starts from the last token's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["layer_norm_heads", "naive_ttt_linear"]

LN_EPS = 1e-6


def layer_norm_heads(z: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """LayerNorm over the last dim with per-row affine. z: [..., D]; gamma, beta broadcastable."""
    return F.layer_norm(z, z.shape[-1:], eps=LN_EPS) * gamma + beta


def _loss(w: Tensor, b: Tensor, k: Tensor, v: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    z = w @ k + b  # [D]
    return (layer_norm_heads(z, gamma, beta) - (v - k)).square().sum()


def naive_ttt_linear(
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
    """Primal per-token loop, gradients by ``torch.func.grad`` (the definition).

    Args:
        q, k, v: ``[B, T, H, D]``.
        eta: ``[B, T, H]`` token learning rates.
        w0: ``[H, D, D]`` initial weights (out x in); b0: ``[H, D]``.
        gamma, beta: ``[H, D]`` inner LayerNorm affine.
        mini_batch: tokens per mini-batch ``b``.

    Returns:
        ``(o [B, T, H, D], (W [B, H, D, D], b [B, H, D]))`` after the last token.
    """
    bsz, t_len, h, d = q.shape
    n = bsz * h
    fold = lambda x: x.transpose(1, 2).reshape(n, t_len, *x.shape[3:])  # noqa: E731  [N, T, ...]
    qf, kf, vf = fold(q), fold(k), fold(v)
    ef = eta.transpose(1, 2).reshape(n, t_len)
    w = w0.unsqueeze(0).expand(bsz, h, d, d).reshape(n, d, d)
    b = b0.unsqueeze(0).expand(bsz, h, d).reshape(n, d)
    g = gamma.unsqueeze(0).expand(bsz, h, d).reshape(n, d)
    be = beta.unsqueeze(0).expand(bsz, h, d).reshape(n, d)
    grad = torch.func.vmap(torch.func.grad(_loss, argnums=(0, 1)))
    outs = []
    for s in range(0, t_len, mini_batch):
        ws, bs = w, b
        acc_w, acc_b = torch.zeros_like(ws), torch.zeros_like(bs)
        for t in range(s, min(s + mini_batch, t_len)):
            gw, gb = grad(ws, bs, kf[:, t], vf[:, t], g, be)
            acc_w = acc_w + ef[:, t, None, None] * gw
            acc_b = acc_b + ef[:, t, None] * gb
            w, b = ws - acc_w, bs - acc_b
            z = (w @ qf[:, t, :, None]).squeeze(-1) + b  # [N, D]
            outs.append(qf[:, t] + layer_norm_heads(z, g, be))
    o = torch.stack(outs, dim=1)  # [N, T, D]
    o = o.reshape(bsz, h, t_len, d).transpose(1, 2)
    return o, (w.reshape(bsz, h, d, d), b.reshape(bsz, h, d))
