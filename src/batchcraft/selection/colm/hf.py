"""Hugging Face integration (extra ``hf``): tiny Llama builder, PEFT LoRA, and a CoLM ``Trainer``.

Importing this module imports ``transformers`` (not done by :mod:`batchcraft.selection.colm`).
Add CoLM to an existing fine-tuning script in a few lines::

    from batchcraft.selection.colm import CoLMSelector, ZOProbe
    from batchcraft.selection.colm.hf import CoLMTrainer, find_param

    probe = ZOProbe(model, find_param(model, "layers.1.self_attn.v_proj.lora_B"), seed=0)
    selector = CoLMSelector(probe, coreset_size=64, source_counts=counts, h=2560)
    args = TrainingArguments(..., per_device_train_batch_size=128)   # the pool size B
    trainer = CoLMTrainer(selector=selector, model=model, args=args, train_dataset=ds,
                          data_collator=collate)                     # batches carry "source"
    trainer.train()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchcraft._capabilities import require
from batchcraft.selection.colm.loss import coreset_loss, per_example_lm_loss
from batchcraft.selection.colm.probes import model_inputs
from batchcraft.selection.colm.select import CoLMSelector, subset_batch
from batchcraft.utils.io import load_checkpoint, save_checkpoint

transformers = require("transformers", "the CoLM Hugging Face integration")

__all__ = [
    "CoLMTrainer",
    "find_module",
    "find_param",
    "load_selector_state",
    "lora_wrap",
    "tiny_llama",
]


def tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    max_len: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A randomly initialised tiny ``LlamaForCausalLM`` (built from a config, nothing downloaded).

    The global RNG is saved and restored around the initialisation.
    """
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(cfg)
    return model.to(dtype)


def lora_wrap(
    model: nn.Module,
    targets: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    seed: int = 0,
) -> Any:
    """PEFT LoRA on ``targets``; LoRA-B initialised at zero by PEFT (global RNG restored)."""
    peft = require("peft", "LoRA adapters")
    cfg = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, cfg)


def find_param(model: nn.Module, pattern: str) -> str:
    """The one parameter name containing ``pattern`` (e.g. ``"layers.1.self_attn.v_proj.lora_B"``)."""
    hits = [n for n, _ in model.named_parameters() if pattern in n]
    if len(hits) != 1:
        raise ValueError(
            f"pattern {pattern!r} must match exactly one parameter, matched {hits[:6]}"
        )
    return hits[0]


def find_module(model: nn.Module, suffix: str) -> str:
    """The one module name ending with ``suffix`` (e.g. ``"layers.1"``, ``"model.norm"``)."""
    hits = [n for n, _ in model.named_modules() if n == suffix or n.endswith("." + suffix)]
    if len(hits) != 1:
        raise ValueError(f"suffix {suffix!r} must match exactly one module, matched {hits[:6]}")
    return hits[0]


SELECTOR_STATE = "colm_selector.safetensors"
_PICKLED_STATE = "colm_selector.pt"  # written by older versions with torch.save (pickle)


class _SaveSelectorState(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Writes the selector state (Adam moments, probe seed/step, generator) into checkpoints."""

    def __init__(self, selector: CoLMSelector) -> None:
        self.selector = selector

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_checkpoint(folder / SELECTOR_STATE, self.selector.state_dict())  # atomic


def load_selector_state(selector: CoLMSelector, checkpoint: str | Path) -> None:
    """Restore ``selector`` from a checkpoint folder written by :class:`CoLMTrainer`.

    The state is a safetensors file with a JSON structure: nothing is unpickled, so a crafted
    file cannot run code. A pickled ``colm_selector.pt`` from an older version is refused.
    """
    folder = Path(checkpoint)
    path = folder / SELECTOR_STATE
    if not path.exists():
        if (folder / _PICKLED_STATE).exists():
            raise ValueError(
                f"{folder / _PICKLED_STATE} is a pickled selector state from an older batchcraft; "
                "it is not loaded (unpickling can run code): resume without it or re-save it"
            )
        raise ValueError(f"{path} does not exist: not a CoLMTrainer checkpoint folder")
    selector.load_state_dict(load_checkpoint(path))


class CoLMTrainer(transformers.Trainer):  # type: ignore[misc,name-defined]
    """``transformers.Trainer`` whose each batch is a pool; the loss is on CoLM's coreset.

    Set ``per_device_train_batch_size`` to the pool size ``B``; batches must carry ``source``
    (so the collator keeps it, and ``remove_unused_columns=False`` for ``datasets`` inputs).
    Every checkpoint folder also receives the selector state (``colm_selector.safetensors``); restore it
    with :func:`load_selector_state` before ``trainer.train(resume_from_checkpoint=...)``.

    Gradient accumulation: every micro-batch is one pool with its own selection, and its loss is
    the mean over its coreset. The optimizer receives the mean of the accumulated micro-batch
    gradients and the logged loss is the mean of their coreset losses, for any
    ``gradient_accumulation_steps`` (the Trainer divides by the number of micro-batches; CoLM's
    loss is per-example, so the Trainer's token count ``num_items_in_batch`` does not apply).
    Evaluation (model in eval mode) selects nothing: its loss is the mean per-example loss of the
    whole batch, and the selector state is untouched.

    Args:
        selector: the CoLM selector (its probe must wrap the same model object).
        *args, **kwargs: passed to ``transformers.Trainer`` (``compute_loss_func`` is refused:
            CoLM computes its own loss).
    """

    # The loss returned by compute_loss is a per-micro-batch mean, so the Trainer must divide it
    # by the number of accumulated micro-batches (read by transformers versions that have it).
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, selector: CoLMSelector, **kwargs: Any) -> None:
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "CoLMTrainer computes its own coreset loss; compute_loss_func would be ignored "
                "and would stop the Trainer from averaging over gradient accumulation, so leave it "
                "unset"
            )
        super().__init__(*args, **kwargs)
        if self.label_smoother is not None:
            raise ValueError(
                "CoLMTrainer's coreset loss has no label smoothing; set label_smoothing_factor=0"
            )
        # Older transformers decide "already scaled for accumulation" from this flag alone
        # (True + a token count = no division); CoLM's loss never uses the token count.
        self.model_accepts_loss_kwargs = False
        self.selector = selector
        self.last_selection: Any = None
        self.add_callback(_SaveSelectorState(selector))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,  # unused: CoLM's loss is a mean over examples
    ) -> Any:
        if not model.training:  # evaluation: plain mean over the batch, no selection
            out = model(**model_inputs(inputs))
            per = per_example_lm_loss(out.logits, inputs["labels"])
            loss = per.mean()
            return (loss, out) if return_outputs else loss
        sel = self.selector.select(inputs)
        self.last_selection = sel
        batch = subset_batch(inputs, sel.idx)
        out = model(**model_inputs(batch))
        per = per_example_lm_loss(out.logits, batch["labels"])
        loss = coreset_loss(per, sel.weights.to(per.device))
        return (loss, out) if return_outputs else loss
