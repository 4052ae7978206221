"""Optional Hugging Face wrapper (``[hf]`` extra): ``model.generate()`` on the LaCT decode cache.

``LaCTHFConfig`` (a ``PretrainedConfig`` holding the :class:`LaCTConfig` fields) and
``LaCTHFForCausalLM`` (a ``PreTrainedModel`` + ``GenerationMixin`` around
:class:`LaCTForCausalLM`). The cache travels as ``past_key_values`` (an :class:`LMCache`), so
generation feeds one token per step with constant memory. Importing this module registers both
classes with ``AutoConfig`` / ``AutoModelForCausalLM`` (model type ``batchcraft_lact``); it is not
imported by ``batchcraft.models`` (transformers is optional).

Example::

    import batchcraft.models.lact_hf  # registers the Auto classes
    from transformers import AutoModelForCausalLM

    export_hf("runs/lm/export", "hf/lact")              # an `lm export` folder -> HF folder
    hf = AutoModelForCausalLM.from_pretrained("hf/lact")
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from batchcraft._capabilities import require
from batchcraft.models.lact_config import LaCTConfig
from batchcraft.models.lact_lm import LaCTForCausalLM, LMCache, load_lact_lm

require("transformers", "the Hugging Face wrapper")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

__all__ = ["LaCTHFConfig", "LaCTHFForCausalLM", "export_hf", "save_hf"]

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
        """Weights are initialised by :class:`LaCTForCausalLM` itself (its init)."""

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

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        """``GenerationMixin.generate`` that honours a left-padded ``attention_mask``.

        The fast-weight state and the RoPE positions of a row start at its first real token,
        so a left-padded prompt must give the continuation of the same prompt unpadded. The
        rows are generated in groups of equal prompt length (pads removed) and put back in the
        padded layout: ``[pads, prompt, new tokens, pad_token_id after an early stop]``.
        ``max_length`` / ``min_length`` count the padded prompt, as in a batched call.
        ``return_dict_in_generate`` is not supported together with padding.
        """
        ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        mask = kwargs.pop("attention_mask", None)
        if ids is None or mask is None or bool(mask.all()):
            return super().generate(ids, *args, attention_mask=mask, **kwargs)
        if mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must have input_ids' shape {tuple(ids.shape)}, got {tuple(mask.shape)}"
            )
        m = mask.to(torch.bool)
        B, T = ids.shape
        lengths = m.sum(dim=1)  # [B]
        left = torch.arange(T, device=m.device)[None, :] >= (T - lengths)[:, None]
        if not torch.equal(m, left) or bool((lengths == 0).any()):
            raise ValueError(
                "generate() needs left padding (zeros then ones in every attention_mask row, at "
                "least one real token): the new tokens follow the last column"
            )
        gen_cfg = kwargs.get("generation_config") or self.generation_config
        if kwargs.get("return_dict_in_generate", gen_cfg.return_dict_in_generate):
            raise ValueError(
                "return_dict_in_generate is not supported with a padded attention_mask; "
                "generate unpadded prompts (or rows of equal length) instead"
            )
        # count new tokens as the padded batched call would (its prompt is T tokens long)
        for name in ("max", "min"):
            if kwargs.get(f"{name}_new_tokens", getattr(gen_cfg, f"{name}_new_tokens")) is None:
                total = kwargs.pop(f"{name}_length", getattr(gen_cfg, f"{name}_length"))
                if total is not None:
                    kwargs[f"{name}_new_tokens"] = max(total - T, 0)
            kwargs.pop(f"{name}_length", None)
        pad = kwargs.get("pad_token_id", gen_cfg.pad_token_id)
        if pad is None:
            eos = kwargs.get("eos_token_id", gen_cfg.eos_token_id)
            pad = (eos[0] if isinstance(eos, (list, tuple)) else eos) if eos is not None else 0
        pieces = []
        for n in sorted(set(lengths.tolist())):
            rows = (lengths == n).nonzero().flatten()
            sub = ids[rows, T - n :]  # the prompts, pads removed
            out = super().generate(sub, *args, attention_mask=torch.ones_like(sub), **kwargs)
            pieces.append((rows, n, out[:, n:]))  # the new tokens of these rows
        width = T + max(p[2].shape[1] for p in pieces)
        result = ids.new_full((B, width), int(pad))
        result[:, :T] = ids
        for rows, _, new in pieces:
            result[rows, T : T + new.shape[1]] = new
        return result


AutoConfig.register(LaCTHFConfig.model_type, LaCTHFConfig, exist_ok=True)
AutoModelForCausalLM.register(LaCTHFConfig, LaCTHFForCausalLM, exist_ok=True)


def save_hf(
    model: LaCTForCausalLM, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``model`` as a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``).

    Args:
        model: a native LaCT LM (e.g. from ``batchcraft.recipes.lm.load_lm`` for a sharded
            training checkpoint).
        out_dir: the folder to write, loadable with ``AutoModelForCausalLM.from_pretrained``
            once this module is imported.
        overwrite: allow writing into an existing, non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from batchcraft.utils.io import check_writable_dir

    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"{out} exists and is not empty; choose a new folder or pass overwrite=True"
        )
    check_writable_dir(out)
    hf = LaCTHFForCausalLM(LaCTHFConfig(**model.config.to_dict()))
    hf.lact.load_state_dict(model.state_dict())
    hf.save_pretrained(out)
    return out


def export_hf(
    checkpoint_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Convert a single-file LaCT checkpoint folder into a ``save_pretrained`` folder.

    Args:
        checkpoint_dir: a folder with ``config.json`` and ``model.safetensors`` (what
            ``batchcraft lm export`` writes; a folder killed mid-swap falls back to its ``.old``
            copy). A sharded ``lm train`` checkpoint raises: export it first, or load it with
            ``batchcraft.recipes.lm.load_lm`` and call :func:`save_hf`.
        out_dir: the Hugging Face folder to write (see :func:`save_hf`).
        overwrite: allow writing into an existing, non-empty ``out_dir``.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        CheckpointError: (a ``ValueError``) the checkpoint is missing, damaged, sharded or
            inconsistent.
        ValueError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    return save_hf(load_lact_lm(checkpoint_dir), out_dir, overwrite=overwrite)
