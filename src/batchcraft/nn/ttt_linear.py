"""Small-chunk TTT baseline layer: TTT-Linear (mini-batch 16) + the same sliding-window attention.

The TTT branch of :class:`batchcraft.nn.LaCTLayer` is swapped for TTT-Linear with mini-batch
gradient descent (Sun et al.), so a comparison isolates the chunk size and state type.
``y = o_proj(o_swa + o_ttt)``; ``o_ttt = q + LN(W_t q + b_t)`` per head (q, k L2-normalised,
token lr ``eta = base_lr * sigmoid(Linear(d, H)(x)) / D``). Training/evaluation only: no decode
cache (use LaCT for constant-memory decoding).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from batchcraft.nn.attention import window_attention
from batchcraft.nn.lact import l2_normalize
from batchcraft.nn.rope import apply_rope
from batchcraft.ops.ttt_linear import ttt_linear_minibatch

__all__ = ["TTTLinearLayer"]


class TTTLinearLayer(nn.Module):
    """TTT-Linear (mini-batch) + sliding-window attention hybrid. x: [B, T, d] -> [B, T, d]."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 4,
        *,
        mini_batch: int = 16,
        window_size: int | None = 2048,
        num_attn_heads: int | None = None,
        base_lr: float = 1.0,
        use_rope: bool = True,
        rope_theta: float = 1e6,
        impl: str = "auto",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        ha = num_heads if num_attn_heads is None else num_attn_heads
        if hidden_size % num_heads or hidden_size % ha:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}) "
                f"and num_attn_heads ({ha})"
            )
        if mini_batch < 1:
            raise ValueError(f"mini_batch ({mini_batch}) must be >= 1")
        d, h = hidden_size, num_heads
        self.hidden_size, self.num_heads, self.head_dim = d, h, d // h
        self.num_attn_heads, self.attn_head_dim = ha, d // ha
        self.mini_batch, self.window_size, self.base_lr = mini_batch, window_size, base_lr
        self.use_rope, self.rope_theta, self.impl, self.attn_impl = (
            use_rope,
            rope_theta,
            impl,
            attn_impl,
        )
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.eta_proj = nn.Linear(d, h)
        self.w0 = nn.Parameter(torch.empty(h, self.head_dim, self.head_dim))
        self.b0 = nn.Parameter(torch.zeros(h, self.head_dim))
        self.ln_gamma = nn.Parameter(torch.ones(h, self.head_dim))
        self.ln_beta = nn.Parameter(torch.zeros(h, self.head_dim))
        self.o_proj = nn.Linear(d, d, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear and ``W0`` N(0, 0.02²); biases 0; inner LayerNorm identity."""
        for m in (self.qkv, self.eta_proj, self.o_proj):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.w0.normal_(0.0, 0.02)
            self.b0.zero_()
            self.ln_gamma.fill_(1.0)
            self.ln_beta.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, T, d]`` -> ``[B, T, d]``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, T, d] each
        pos = torch.arange(t, device=x.device)
        o = x.new_zeros(b, t, d)
        if self.window_size is None or self.window_size > 0:
            ha, da = self.num_attn_heads, self.attn_head_dim
            qa, ka, va = (z.reshape(b, t, ha, da) for z in (q, k, v))
            if self.use_rope:
                qa, ka = (
                    apply_rope(qa, pos, theta=self.rope_theta),
                    apply_rope(ka, pos, theta=self.rope_theta),
                )
            o = o + window_attention(
                qa, ka, va, window=self.window_size, impl=self.attn_impl
            ).reshape(b, t, d)
        h, dd = self.num_heads, self.head_dim
        qt = l2_normalize(q.reshape(b, t, h, dd))
        kt = l2_normalize(k.reshape(b, t, h, dd))
        vt = v.reshape(b, t, h, dd)
        eta = self.base_lr * torch.sigmoid(self.eta_proj(x)) / dd  # [B, T, H]
        o_ttt, _ = ttt_linear_minibatch(
            qt, kt, vt, eta, self.w0, self.b0, self.ln_gamma, self.ln_beta,
            mini_batch=self.mini_batch, impl=self.impl,
        )  # fmt: skip
        return self.o_proj(o + o_ttt.reshape(b, t, d))
