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

from batchcraft.nn.lact import LaCTLayerOptions

__all__ = [
    "PRESETS",
    "LaCTConfig",
    "get_preset",
    "lact_3b",
    "lact_760m",
    "lact_small",
    "lact_tiny",
]


@dataclass(frozen=True, kw_only=True)
class LaCTConfig(LaCTLayerOptions):
    """Hyper-parameters of :class:`batchcraft.models.LaCTForCausalLM`.

    Every field of :class:`batchcraft.nn.lact.LaCTLayerOptions` (the layer's options, which in
    turn extend the op's :class:`batchcraft.ops.lact.LaCTOptions`) is a field here too, with the
    tiny preset's defaults; the blocks read them by name (``LaCTLayer(options=config)``), so
    nothing is copied field by field and a new layer or op option is a config field at once.
    Frozen: derive variants with ``dataclasses.replace`` or the preset functions' overrides.
    """

    vocab_size: int = 256  # byte level by default
    num_layers: int = 2
    mixer: str = "lact"  # "lact", or "ttt_linear" (small-chunk TTT baseline, no decode cache)
    ttt_mini_batch: int = 16  # mini-batch of the ttt_linear mixer
    mlp_hidden: int | None = None  # None: 8d/3 rounded up to a multiple of 256
    norm_eps: float = 1e-6
    init_std: float = 0.02
    # layer options with the tiny preset's defaults (the rest: LaCTLayerOptions' defaults)
    hidden_size: int = 128  # d
    num_heads: int = 2  # fast-weight (TTT) heads H; D = d / H
    num_attn_heads: int | None = 4  # attention heads Ha; Da = d / Ha (RoPE on TTT: D % Da == 0)
    chunk_size: int = 16  # C: tokens per fast-weight update
    window_size: int | None = 16  # W: attention window (None = full attention, 0 = no attention)
    low_rank: int = 8
    inner_lr: float | None = 32.0  # chunk-mean inner step (None: the paper's summed base_lr)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size < 2 or self.num_layers < 1:
            raise ValueError("vocab_size >= 2 and num_layers >= 1 are required")
        if self.mixer not in ("lact", "ttt_linear"):
            raise ValueError(f"mixer must be one of ('lact', 'ttt_linear'), got {self.mixer!r}")
        if self.ttt_mini_batch < 1:
            raise ValueError(f"ttt_mini_batch ({self.ttt_mini_batch}) must be >= 1")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden ({self.mlp_hidden}) must be >= 1 or None")
        if not (self.norm_eps > 0 and self.init_std > 0):
            raise ValueError(
                f"norm_eps ({self.norm_eps}) and init_std ({self.init_std}) must be > 0"
            )

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
        n_mat = 1 if self.fast_weight == "linear" else 3
        return self.num_layers * n_mat * self.num_heads * self.head_dim * self.hidden_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> LaCTConfig:
        """The config saved by :meth:`to_dict` (older files lack newer fields: defaults apply,
        except ``inner_lr``: files written before it existed trained with the paper's summed
        per-token lr, so a missing ``inner_lr`` reads as ``None``)."""
        names = {f.name for f in fields(LaCTConfig)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown LaCTConfig fields {sorted(unknown)}")
        return LaCTConfig(**{"inner_lr": None, **d})


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
    """Paper 760M: d 1536, 24 layers, Ha 24, H 4, C = W = 2048, vocab 32000 (~795M params).

    The paper's inner lr exactly (``inner_lr=None``: per-token ``base_lr`` 1e-3 summed over C).
    """
    base = LaCTConfig(
        vocab_size=32000, hidden_size=1536, num_layers=24, num_heads=4, num_attn_heads=24,
        chunk_size=2048, window_size=2048, low_rank=32, inner_lr=None,
    )  # fmt: skip
    return replace(base, **kw)


def lact_3b(**kw: Any) -> LaCTConfig:
    """Paper 3B: d 3072, 24 layers, Ha 24 (the official JSON's 25 does not divide 3072), H 4;
    the paper's inner lr (``inner_lr=None``)."""
    base = LaCTConfig(
        vocab_size=32000, hidden_size=3072, num_layers=24, num_heads=4, num_attn_heads=24,
        chunk_size=2048, window_size=2048, low_rank=32, inner_lr=None,
    )  # fmt: skip
    return replace(base, **kw)


PRESETS = {"tiny": lact_tiny, "small": lact_small, "760m": lact_760m, "3b": lact_3b}


def get_preset(name: str, **kw: Any) -> LaCTConfig:
    """Preset by name (``tiny``, ``small``, ``760m``, ``3b``; a ``lact_`` prefix is allowed)."""
    key = name.removeprefix("lact_")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key](**kw)
