"""batchcraft.models."""

from batchcraft.models.lact_config import (
    LaCTConfig,
    full_attention_baseline,
    get_preset,
    lact_3b,
    lact_760m,
    lact_small,
    lact_tiny,
    swa_baseline,
    ttt_linear_baseline,
)
from batchcraft.models.lact_lm import LaCTForCausalLM, LMCache, LMOutput

__all__ = [
    "LMCache",
    "LMOutput",
    "LaCTConfig",
    "LaCTForCausalLM",
    "full_attention_baseline",
    "get_preset",
    "lact_3b",
    "lact_760m",
    "lact_small",
    "lact_tiny",
    "swa_baseline",
    "ttt_linear_baseline",
]
