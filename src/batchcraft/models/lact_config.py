"""LaCT language-model configuration and presets.

Presets are functions returning a :class:`LaCTConfig`; keyword overrides are applied on top::

    cfg = lact_tiny(use_muon=True)

The parameter-matched baselines (``swa_baseline``, ...) need the model to count parameters and
live in :mod:`batchcraft.models.lact_lm`, so this module imports nothing from the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = [
    "PRESETS",
    "LaCTConfig",
    "get_preset",
    "lact_3b",
    "lact_760m",
    "lact_small",
    "lact_tiny",
]


@dataclass(kw_only=True)
class LaCTConfig:
    """Hyper-parameters of :class:`batchcraft.models.LaCTForCausalLM`."""

    vocab_size: int = 256  # byte level by default
    hidden_size: int = 128  # d
    num_layers: int = 2
    num_heads: int = 2  # fast-weight (TTT) heads H; D = d / H
    num_attn_heads: int = 4  # attention heads Ha; Da = d / Ha (RoPE on TTT needs D % Da == 0)
    inter_multi: int = 1  # fast hidden width Dh = inter_multi * D
    chunk_size: int = 16  # C: tokens per fast-weight update
    window_size: int | None = 16  # W: attention window (None = full attention, 0 = no attention)
    use_ttt: bool = True  # False: attention-only baseline
    mixer: str = "lact"  # "lact", or "ttt_linear" (small-chunk TTT baseline, no decode cache)
    ttt_mini_batch: int = 16  # mini-batch of the ttt_linear mixer
    base_lr: float = 1e-3  # inner lr at init (softplus around it)
    use_momentum: bool = True
    use_muon: bool = False
    muon: str = "tuned"  # Newton-Schulz schedule: "tuned" (LM) or "classic"
    weight_norm: str | None = "post"  # "post", "pre" or None
    qk_norm: bool = False
    v_silu: bool = True
    use_rope: bool = True
    rope_theta: float = 1e6
    init: str = "low_rank"  # fast-weight init: "low_rank", "full", "nvs"
    low_rank: int = 8
    fw_init_gain: float = 0.5
    output_gate: bool = True
    fast_weight: str = "swiglu"  # or "linear"
    mlp_hidden: int | None = None  # None: 8d/3 rounded up to a multiple of 256
    norm_eps: float = 1e-6
    init_std: float = 0.02
    lact_impl: str = "auto"  # op implementation ("auto", "chunk", "naive", ...)
    attn_impl: str = "auto"  # attention implementation ("auto", "sdpa", "flex", "naive")

    def __post_init__(self) -> None:
        d = self.hidden_size
        if self.vocab_size < 2 or self.num_layers < 1 or d < 1:
            raise ValueError("vocab_size >= 2, num_layers >= 1 and hidden_size >= 1 are required")
        if self.num_heads < 1 or d % self.num_heads:
            raise ValueError(
                f"hidden_size ({d}) must be divisible by num_heads ({self.num_heads}); "
                f"divisors near it: {_divisors_near(d, self.num_heads)}"
            )
        if self.num_attn_heads < 1 or d % self.num_attn_heads:
            raise ValueError(
                f"hidden_size ({d}) must be divisible by num_attn_heads ({self.num_attn_heads}); "
                f"divisors near it: {_divisors_near(d, self.num_attn_heads)}"
            )
        head, attn_head = d // self.num_heads, d // self.num_attn_heads
        if self.use_ttt and self.use_rope and head % attn_head:
            raise ValueError(
                f"TTT head dim ({head}) must be a multiple of the attention head dim ({attn_head})"
            )
        w = self.window_size
        if w is not None and w < 0:
            raise ValueError(f"window_size ({w}) must be >= 0 or None")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size ({self.chunk_size}) must be >= 1")
        if self.use_ttt and w is not None and 0 < w < self.chunk_size:
            raise ValueError(
                f"window_size ({w}) must be >= chunk_size ({self.chunk_size}) for exact causality"
            )
        if not self.use_ttt and w == 0:
            raise ValueError("use_ttt=False needs attention: window_size must be > 0 or None")
        for name, val, ok in (
            ("muon", self.muon, ("tuned", "classic")),
            ("weight_norm", self.weight_norm, ("post", "pre", None)),
            ("init", self.init, ("low_rank", "full", "nvs")),
            ("fast_weight", self.fast_weight, ("swiglu", "linear")),
            ("mixer", self.mixer, ("lact", "ttt_linear")),
        ):
            if val not in ok:
                raise ValueError(f"{name} must be one of {ok}, got {val!r}")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden ({self.mlp_hidden}) must be >= 1 or None")

    @property
    def intermediate_size(self) -> int:
        """SwiGLU MLP width: ``mlp_hidden`` or 8d/3 rounded up to a multiple of 256."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 256 * math.ceil(8 * self.hidden_size / 3 / 256)

    @property
    def fast_state_numel(self) -> int:
        """Fast-weight state elements per sequence (all layers): ``L * 3 * H * D * Dh``."""
        if not self.use_ttt:
            return 0
        dd = self.hidden_size // self.num_heads
        n_mat = 1 if self.fast_weight == "linear" else 3
        dh = dd if self.fast_weight == "linear" else self.inter_multi * dd
        return self.num_layers * n_mat * self.num_heads * dd * dh

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LaCTConfig:
        names = {f.name for f in fields(LaCTConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LaCTConfig fields {sorted(unknown)}")
        return LaCTConfig(**d)


def _divisors_near(n: int, k: int) -> list[int]:
    return sorted((x for x in range(1, n + 1) if n % x == 0), key=lambda x: abs(x - k))[:3]


def lact_tiny(**kw: Any) -> LaCTConfig:
    """d 128, 2 layers, Ha 4, H 2, C = W = 16, low rank 8: CPU tests and examples."""
    return replace(LaCTConfig(), **kw)


def lact_small(**kw: Any) -> LaCTConfig:
    """d 256, 4 layers, Ha 8, H 2, C = W = 64: trainable on a CPU in minutes."""
    base = LaCTConfig(
        hidden_size=256, num_layers=4, num_heads=2, num_attn_heads=8, chunk_size=64,
        window_size=64, low_rank=16,
    )  # fmt: skip
    return replace(base, **kw)


def lact_760m(**kw: Any) -> LaCTConfig:
    """Paper 760M: d 1536, 24 layers, Ha 24, H 4, C = W = 2048, vocab 32000 (~795M params)."""
    base = LaCTConfig(
        vocab_size=32000, hidden_size=1536, num_layers=24, num_heads=4, num_attn_heads=24,
        chunk_size=2048, window_size=2048, low_rank=32,
    )  # fmt: skip
    return replace(base, **kw)


def lact_3b(**kw: Any) -> LaCTConfig:
    """Paper 3B: d 3072, 24 layers, Ha 24 (the official JSON's 25 does not divide 3072), H 4."""
    base = LaCTConfig(
        vocab_size=32000, hidden_size=3072, num_layers=24, num_heads=4, num_attn_heads=24,
        chunk_size=2048, window_size=2048, low_rank=32,
    )  # fmt: skip
    return replace(base, **kw)


PRESETS = {"tiny": lact_tiny, "small": lact_small, "760m": lact_760m, "3b": lact_3b}


def get_preset(name: str, **kw: Any) -> LaCTConfig:
    """Preset by name (``tiny``, ``small``, ``760m``, ``3b``; a ``lact_`` prefix is allowed)."""
    key = name.removeprefix("lact_")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key](**kw)
