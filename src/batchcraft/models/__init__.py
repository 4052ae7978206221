"""batchcraft.models."""

from batchcraft.models.lact_config import (
    LaCTConfig,
    get_preset,
    lact_3b,
    lact_760m,
    lact_small,
    lact_tiny,
)
from batchcraft.models.lact_lm import (
    LaCTForCausalLM,
    LMCache,
    LMOutput,
    full_attention_baseline,
    swa_baseline,
    ttt_linear_baseline,
)
from batchcraft.models.nvs import (  # issue 10
    NVSConfig,
    NVSModel,
    NVSState,
    attention_baseline,
    nvs_tiny,
)

__all__ = [
    "LMCache",
    "LMOutput",
    "LaCTConfig",
    "LaCTForCausalLM",
    "NVSConfig",
    "NVSModel",
    "NVSState",
    "attention_baseline",
    "full_attention_baseline",
    "get_preset",
    "lact_3b",
    "lact_760m",
    "lact_small",
    "lact_tiny",
    "nvs_tiny",
    "swa_baseline",
    "ttt_linear_baseline",
]
