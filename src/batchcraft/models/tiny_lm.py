"""A tiny causal LM with LoRA adapters, for CoLM tests and the CPU experiment (no transformers).

Pre-norm GPT blocks with separate ``q``, ``k``, ``v``, ``o`` projections so LoRA can target any of
them; attention written out (no SDPA) so ``torch.func.vmap`` batches it. Parameter names follow
``blocks.{i}.attn.{q,k,v,o}[.lora_A|.lora_B|.base.weight]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LoRALinear", "TinyLM", "TinyLMConfig", "apply_lora"]


@dataclass(kw_only=True)
class TinyLMConfig:
    vocab_size: int = 50  # char vocabulary
    d_model: int = 64  # width
    n_heads: int = 4
    n_layers: int = 2
    max_len: int = 64  # learned positions


class LoRALinear(nn.Module):
    """``y = base(x) + (alpha / r) * x A^T B^T``; ``base`` frozen, ``B`` initialised at zero.

    Args:
        base: the wrapped linear layer.
        r: adapter rank.
        alpha: scale numerator.
        generator: initialises ``A`` (Kaiming-uniform style); ``B = 0``.
    """

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        self.base, self.scale = base, alpha / r
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        bound = 1.0 / math.sqrt(base.in_features)
        a = (torch.rand(r, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


class _Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.h = cfg.n_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = (
            m(x).view(b, t, self.h, d // self.h).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.h)  # [B, H, T, T]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # [B, T, D]
        return self.o(y)


class _Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = _Attention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Char-level causal LM: ``forward(input_ids [B, T], attention_mask=None) -> logits [B, T, V]``.

    Right padding needs no mask (causality hides later pad tokens); ``attention_mask`` is accepted
    for call compatibility and ignored.
    """

    def __init__(self, cfg: TinyLMConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        t = input_ids.shape[-1]
        if t > self.cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.cfg.max_len}")
        x = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


def apply_lora(
    model: nn.Module,
    targets: Sequence[str] = ("q", "k", "v", "o"),
    *,
    r: int = 8,
    alpha: float = 16.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose attribute name is in ``targets``.

    Returns:
        Names of the trainable (LoRA) parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(mod, name, LoRALinear(child, r, alpha, generator=generator))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"no nn.Linear named one of {list(targets)} was found")
    return trainable
