"""Memory planner for LaCT language-model training (``batchcraft lm plan``).

For a preset, a context length and a number of GPUs, :func:`plan_memory` lists, per rank and for
every combination of ``ddp`` / ``fsdp``, activation checkpointing on / off and a degree of chunk
parallelism: parameter, gradient, optimizer-state and activation memory, the transient buffers
around them, and whether the total fits one GPU.

How each term is obtained:

* **parameters, gradients, optimizer state**: counted exactly from the model built on the meta
  device. DDP holds fp32 copies of everything (plus the reducer's fp32 gradient buckets, another
  copy of the gradients, when there is more than one rank). FSDP2 shards every parameter on
  dim 0 over all ranks (rank 0 holds ``ceil(rows / P)`` rows: the largest shard) and keeps fp32
  shards of the weights, gradients and optimizer state. Optimizer state: AdamW 8 bytes per
  parameter (two moments), Adan 16 (three moments and the previous gradient).
* **activations**: MEASURED without allocating them by :func:`batchcraft.recipes.memory.
  trace_activations` (the model runs forward + loss under ``FakeTensorMode`` while
  ``saved_tensors_hooks`` add up the unique storages autograd saves). FSDP on GPU computes in
  bf16 (the trace runs in bf16), DDP in fp32 (the recipe uses no autocast). On GPU (the default
  target) attention is counted as a flash/flex kernel and the LaCT op as the Triton kernel
  (inputs + per-chunk fast weights, recomputing the rest).
* **activation checkpointing** (per block): the block inputs of every layer, the activations
  outside the blocks, and one block's activations while it is recomputed.
* **chunk parallelism** over ``cp`` ranks: each rank holds ``T / cp`` tokens of every sequence
  (a piece of every chunk); its activations are traced at that length with chunks of ``C / cp``
  (the same number of updates), plus, per layer, the all-gathered keys and values the attention
  keeps (``2 * (T - T / cp) * d`` more elements) and, on GPU, the summed update per chunk that the
  chunk-parallel path keeps when recomputing (``3 * H * D * Dh``).
* **other** (estimated): FSDP's unsharded buffers (the root module's bf16 weights, two blocks'
  gathered weights, one block's unsharded gradients), DDP's gradient buckets, and the gradient of
  the logits (fp32, plus a copy in the compute dtype).

Example::

    rows = plan_memory("3b", context=32768, gpus=8, gpu_mem_gib=80)
    print(plan_text(rows, preset="3b", context=32768, gpus=8, gpu_mem_gib=80))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from batchcraft.models.lact_config import LaCTConfig, get_preset
from batchcraft.recipes.memory import TARGETS, ActivationProfile, trace_activations

__all__ = ["OPTIMIZER_BYTES", "PlanRow", "format_plan", "plan_memory", "plan_text"]

GIB = 2**30
OPTIMIZER_BYTES = {"adamw": 8, "adan": 16}  # fp32 optimizer state per parameter
USABLE = 0.9  # share of the GPU memory the plan may fill (allocator fragmentation, CUDA context)


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class PlanRow:
    """Per-rank memory of one setting (bytes)."""

    parallel: str
    checkpointing: bool
    cp: int
    seqs_per_rank: int
    tokens_per_rank: int
    params: int
    grads: int
    optimizer: int
    activations: int
    other: int
    fits: bool

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.other

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def _param_shapes(config: LaCTConfig) -> tuple[list[torch.Size], list[torch.Size], int]:
    """(shapes of the root module's own parameters, shapes of one block's, num blocks)."""
    from batchcraft.models.lact_lm import LaCTForCausalLM

    with torch.device("meta"):
        model = LaCTForCausalLM(replace(config, num_layers=1))
    root = [p.shape for n, p in model.named_parameters() if not n.startswith("blocks.")]
    block = [p.shape for p in model.blocks[0].parameters()]
    return root, block, config.num_layers


def _numel(shapes: Iterable[torch.Size], world: int = 1) -> int:
    """Elements rank 0 holds when each tensor is split on dim 0 into ``world`` chunks."""
    total = 0
    for s in shapes:
        rows = s[0] if len(s) else 1
        total += math.ceil(rows / world) * (math.prod(s) // max(rows, 1))
    return total


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def plan_memory(
    preset: str | LaCTConfig,
    *,
    context: int,
    gpus: int,
    gpu_mem_gib: float,
    batch: int | None = None,
    optimizer: str = "adamw",
    cp: Iterable[int] | None = None,
    target: str = "gpu",
    usable: float = USABLE,
) -> list[PlanRow]:
    """Per-rank memory of ddp / fsdp x activation checkpointing x chunk parallelism.

    Args:
        preset: a preset name (``tiny``, ``small``, ``760m``, ``3b``) or a config.
        context: T, tokens per training sequence.
        gpus: ranks P.
        gpu_mem_gib: memory of one GPU in GiB.
        batch: global batch (sequences per step); default one sequence per data-parallel group
            (``P / cp`` sequences), so every rank holds ``T / cp`` tokens.
        optimizer: ``adamw`` or ``adan``.
        cp: chunk-parallel degrees to list (default: 1, 2, 4, 8 where they divide ``gpus`` and
            the chunk size).
        target: ``"gpu"`` (bf16 FSDP compute, flash attention, Triton LaCT) or ``"cpu"``.
        usable: share of ``gpu_mem_gib`` a plan may fill.

    Returns:
        One :class:`PlanRow` per setting (settings whose batch does not split are left out).
    """
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    _check_int("context", context, 2)
    _check_int("gpus", gpus, 1)
    if not (
        isinstance(gpu_mem_gib, (int, float)) and math.isfinite(gpu_mem_gib) and gpu_mem_gib > 0
    ):
        raise ValueError(f"gpu memory must be a number of GiB > 0, got {gpu_mem_gib!r}")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_BYTES)}, got {optimizer!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if batch is not None:
        _check_int("batch", batch, 1)
    C = cfg.chunk_size
    if cp is None:
        degrees = [d for d in (1, 2, 4, 8) if gpus % d == 0 and C % d == 0 and context % d == 0]
    else:
        degrees = sorted(set(cp))
        for d in degrees:
            _check_int("cp", d, 1)
            if gpus % d or C % d or context % d:
                raise ValueError(
                    f"cp={d} must divide the number of GPUs ({gpus}), the chunk size ({C}) and "
                    f"the context ({context})"
                )
    root, block, L = _param_shapes(cfg)
    n_root, n_block = _numel(root), _numel(block)
    n_all = n_root + L * n_block
    rows: list[PlanRow] = []
    opt_b = OPTIMIZER_BYTES[optimizer]
    cache: dict[tuple[Any, ...], ActivationProfile] = {}
    for d in degrees:
        groups = gpus // d  # data-parallel groups, each holding whole sequences
        b_global = groups if batch is None else batch
        if b_global % groups:
            continue
        seqs, tokens = b_global // groups, context // d
        for parallel in ("ddp", "fsdp"):
            low = parallel == "fsdp" and target == "gpu"
            dtype = torch.bfloat16 if low else torch.float32
            item = 2 if low else 4
            key = (d, dtype)
            if key not in cache:
                cache[key] = trace_activations(
                    replace(cfg, chunk_size=C // d), batch=seqs, context=tokens, dtype=dtype,
                    target=target, chunk_parallel=d > 1 and target == "gpu",
                )  # fmt: skip
            prof = cache[key]
            cast = 0 if item == 4 else item  # a compute-dtype copy next to an fp32 tensor
            # cp: the attention keeps the all-gathered keys and values of the whole sequence
            attn = cfg.window_size != 0
            gathered = 2 * seqs * (context - tokens) * cfg.hidden_size * item if attn else 0
            logits_grad = seqs * tokens * cfg.vocab_size * (4 + cast)
            if parallel == "ddp":
                params = grads = 4 * n_all
                opt = opt_b * n_all
                other = (4 * n_all if gpus > 1 else 0) + logits_grad  # + the reducer's buckets
            else:
                shard = _numel(root, gpus) + L * _numel(block, gpus)
                params = grads = 4 * shard
                opt = opt_b * shard
                # unsharded: the root's weights (kept), two blocks' gathered weights (current +
                # prefetched), one block's gradients before the (fp32) reduce-scatter
                grad_unsharded = item + (4 if item != 4 else 0)
                unsharded = item * n_root + (2 * item + grad_unsharded) * n_block
                other = (unsharded if gpus > 1 else 0) + logits_grad
            for ac in (False, True):
                act = prof.checkpointed if ac else prof.total
                act += (1 if ac else L) * gathered
                row = PlanRow(
                    parallel=parallel, checkpointing=ac, cp=d, seqs_per_rank=seqs,
                    tokens_per_rank=tokens * seqs, params=params, grads=grads, optimizer=opt,
                    activations=act, other=other, fits=False,
                )  # fmt: skip
                rows.append(replace(row, fits=row.total <= usable * gpu_mem_gib * GIB))
    if not rows:
        raise ValueError(
            f"batch ({batch}) must be a multiple of the number of data-parallel groups "
            f"(gpus / cp = {[gpus // d for d in degrees]}) for at least one cp degree"
        )
    return rows


def plan_text(
    rows: list[PlanRow], *, preset: str, context: int, gpus: int, gpu_mem_gib: float
) -> str:
    """What ``batchcraft lm plan`` prints: a header, the table and the settings that fit."""
    fit = [r for r in rows if r.fits]
    head = (
        f"{preset}: context {context}, {gpus} GPU(s) of {gpu_mem_gib:g} GiB "
        f"(a plan may fill {USABLE:.0%}); per-rank memory in GiB"
    )
    if fit:
        best = min(fit, key=lambda r: r.total)
        verdict = (
            f"fits: {len(fit)} of {len(rows)} settings; least memory: {best.parallel}, "
            f"activation checkpointing {'on' if best.checkpointing else 'off'}, cp {best.cp} "
            f"({best.total / GIB:.1f} GiB per rank)"
        )
    else:
        verdict = "fits: none of these settings; add GPUs, shorten the context or use cp"
    notes = (
        "activations: measured by tracing the model (FakeTensorMode), attention counted as a "
        "flash kernel and the LaCT op as the Triton kernel; other: FSDP unsharded buffers or "
        "DDP gradient buckets, plus the logits gradient (estimated)"
    )
    return "\n".join([head, "", format_plan(rows).rstrip(), "", verdict, notes])


def format_plan(rows: list[PlanRow]) -> str:
    """A Markdown table of the plan, sizes in GiB."""
    from batchcraft.utils.bench import format_table

    def g(x: int) -> str:
        v = x / GIB
        return f"{v:.3g}" if v < 1000 else f"{v:.0f}"

    table = [
        {
            "parallel": r.parallel,
            "act. ckpt": "yes" if r.checkpointing else "no",
            "cp": r.cp,
            "seq x tokens / rank": f"{r.seqs_per_rank} x {r.tokens_per_rank // r.seqs_per_rank}",
            "params GiB": g(r.params),
            "grads GiB": g(r.grads),
            "optim GiB": g(r.optimizer),
            "activ GiB": g(r.activations),
            "other GiB": g(r.other),
            "total GiB": g(r.total),
            "fits": "yes" if r.fits else "no",
        }
        for r in rows
    ]
    return format_table(table)
