"""Optional Hugging Face wrapper (``[hf]`` extra): ``model.generate()`` on the LaCT decode cache.

``LaCTHFConfig`` (a ``PretrainedConfig`` holding the :class:`LaCTConfig` fields) and
``LaCTHFForCausalLM`` (a ``PreTrainedModel`` + ``GenerationMixin`` around
:class:`LaCTForCausalLM`). The cache travels as ``past_key_values`` (an :class:`LMCache`), so
generation feeds one token per step with constant memory. Import this module only when
transformers is installed (it is not imported by ``batchcraft.models``).

Example::

    from batchcraft.models.lact_hf import LaCTHFConfig, LaCTHFForCausalLM
    hf = LaCTHFForCausalLM(LaCTHFConfig(**lact_tiny().to_dict()))
    out = hf.generate(ids, max_new_tokens=20, do_sample=False)
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from batchcraft._capabilities import require
from batchcraft.models.lact_config import LaCTConfig
from batchcraft.models.lact_lm import LaCTForCausalLM, LMCache

require("transformers", "the Hugging Face wrapper")

from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

__all__ = ["LaCTHFConfig", "LaCTHFForCausalLM"]

_FIELDS = [f.name for f in fields(LaCTConfig)]
# transformers 5 renamed ``past_key_values`` to ``cache``; support both spellings
_CACHE_KEY = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class LaCTHFConfig(PretrainedConfig):  # type: ignore[misc]
    """``PretrainedConfig`` carrying every :class:`LaCTConfig` field."""

    model_type = "batchcraft_lact"

    def __init__(self, **kwargs: Any) -> None:
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        self.lact = LaCTConfig(**own).to_dict()  # validates
        for k, v in self.lact.items():
            setattr(self, k, v)
        self.num_hidden_layers = self.lact["num_layers"]  # names generate() looks up
        self.num_attention_heads = self.lact["num_attn_heads"] or self.lact["num_heads"]
        kwargs.setdefault("use_cache", True)
        super().__init__(**kwargs)

    def to_lact(self) -> LaCTConfig:
        return LaCTConfig(**{k: getattr(self, k) for k in _FIELDS})


class LaCTHFForCausalLM(PreTrainedModel, GenerationMixin):  # type: ignore[misc]
    """``PreTrainedModel`` around :class:`LaCTForCausalLM` with a constant-size cache."""

    config_class = LaCTHFConfig
    base_model_prefix = "lact_base"  # not an attribute: keep "lact." keys as they are
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: LaCTHFConfig) -> None:
        super().__init__(config)
        self.lact = LaCTForCausalLM(config.to_lact())
        self.post_init()  # HF bookkeeping; _init_weights below keeps our own init

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights are initialised by :class:`LaCTForCausalLM` itself (spec §7 init)."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.lact.embed

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lact.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is our LMCache, created by the first forward

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: Any = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        given = cache if cache is not None else past_key_values
        cache = given if isinstance(given, LMCache) else None
        mask = None
        if cache is None and attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask
        want = bool(use_cache) and mask is None
        out = self.lact(input_ids, labels=labels, cache=cache, attention_mask=mask, use_cache=want)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, **{_CACHE_KEY: out.cache})

    def prepare_inputs_for_generation(  # type: ignore[override]
        self, input_ids: Tensor, cache: Any = None, past_key_values: Any = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Feed only the tokens the cache has not consumed yet."""
        given = cache if cache is not None else past_key_values
        if isinstance(given, LMCache):
            input_ids = input_ids[:, given.position :]
        else:
            given = None
        return {"input_ids": input_ids, _CACHE_KEY: given, "use_cache": True}
