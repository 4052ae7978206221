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
* **activations**: MEASURED, without allocating them: the model is built and run forward (loss
  included) under ``FakeTensorMode`` while ``saved_tensors_hooks`` sum the bytes of the unique
  storages autograd saves for backward. Two blocks are traced and the largest is counted
  ``num_layers`` times (every block has the same shapes). FSDP on GPU computes in bf16 (the trace
  runs in bf16), DDP in fp32 (the recipe uses no autocast).
* **GPU kernels** (``target="gpu"``): attention is counted as a flash/flex kernel, which saves
  ``q, k, v``, the output and the fp32 log-sum-exp (the CPU path saves per-block scores instead);
  the LaCT op is counted as the Triton kernel, which saves its fp32 inputs and, per complete
  chunk, the fast weights (and momentum / pre-norm accumulators) and recomputes the rest in
  backward. ``target="cpu"`` traces the CPU code as it runs (what the tests check against a real
  forward).
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

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from batchcraft.models.lact_config import LaCTConfig, get_preset

__all__ = [
    "OPTIMIZER_BYTES",
    "ActivationProfile",
    "PlanRow",
    "SavedBytes",
    "format_plan",
    "measure_step_memory",
    "plan_memory",
    "plan_text",
    "state_bytes",
    "trace_activations",
]

GIB = 2**30
OPTIMIZER_BYTES = {"adamw": 8, "adan": 16}  # fp32 optimizer state per parameter
TARGETS = ("gpu", "cpu")
USABLE = 0.9  # share of the GPU memory the plan may fill (allocator fragmentation, CUDA context)


# ------------------------------------------------------------------ counting saved storages
def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), else ``t``."""
    inner = getattr(t, "_local_tensor", None)
    return inner if isinstance(inner, Tensor) else t


class SavedBytes:
    """Bytes of the unique storages behind a set of tensors (views and aliases counted once)."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        """Args: exclude: tensors whose storages are never counted (e.g. the parameters)."""
        self._seen: dict[int, int] = {}
        self._keep: list[Tensor] = []  # keeps storages alive, so their ids are never reused
        for t in exclude:
            self._seen[_local(t).untyped_storage()._cdata] = 0

    def add(self, t: Tensor) -> None:
        t = _local(t)
        s = t.untyped_storage()
        key = s._cdata
        if key not in self._seen:
            self._seen[key] = s.nbytes()
            self._keep.append(t)

    @property
    def total(self) -> int:
        return sum(self._seen.values())

    @contextlib.contextmanager
    def saved_by_autograd(self) -> Iterator[SavedBytes]:
        """Count every tensor autograd saves for backward inside the block."""

        def pack(t: Tensor) -> Tensor:
            self.add(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield self


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (FSDP2: local
    shards; unique storages).

    Returns:
        ``{"params", "grads", "optimizer"}`` in bytes.
    """
    out = {}
    params = list(model.parameters())
    for name, ts in (
        ("params", params),
        ("grads", [p.grad for p in params if p.grad is not None]),
        (
            "optimizer",
            []
            if optimizer is None
            else [
                v for st in optimizer.state.values() for v in st.values() if isinstance(v, Tensor)
            ],
        ),
    ):
        c = SavedBytes()
        for t in ts:
            c.add(t)
        out[name] = c.total
    return out


def measure_step_memory(
    config: LaCTConfig,
    *,
    parallel: str = "ddp",
    optimizer: str = "adamw",
    batch: int = 1,
    context: int,
    seed: int = 0,
) -> dict[str, int]:
    """What one real training step holds on this rank (the current process group, if any).

    Saved activations are counted on a forward of the unwrapped model (they do not depend on
    the wrapper on CPU); then the model is wrapped like ``lm train --parallel`` and takes one
    optimizer step, after which parameters, gradients and optimizer state are counted.

    Returns:
        ``{"params", "grads", "optimizer", "activations"}`` in bytes.
    """
    from batchcraft.recipes.dist import dist_info
    from batchcraft.recipes.lm import (
        LMBatch,
        LMTrainSettings,
        _loss,
        build_lm,
        build_optimizer,
        parallelize,
        train_step,
    )

    model = build_lm(config, seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, context + 1), generator=g)
    b = LMBatch(ids[:, :-1], ids[:, 1:])
    act = SavedBytes(exclude=model.parameters())
    with act.saved_by_autograd():
        loss = _loss(model, b)
    del loss
    s = LMTrainSettings(parallel=parallel, optimizer=optimizer, context=max(context, 2))
    runner = parallelize(model, s, dist_info("cpu"))
    opt = build_optimizer(model, s)
    train_step(runner, opt, b, 1e-3, 1.0)
    return {**state_bytes(model, opt), "activations": act.total}


# ------------------------------------------------------------------ GPU-kernel stand-ins
class _FlashLike(torch.autograd.Function):
    """Attention that saves what a flash / flex kernel saves: q, k, v, out, fp32 lse."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, out: Tensor) -> Tensor:
        lse = q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)  # [B, H, T]
        o = out.clone()
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # pragma: no cover - traces never run backward
        raise RuntimeError("the planner's attention stand-in only measures the forward")


def _flash_attention(real: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def attend(q: Tensor, k: Tensor, v: Tensor, **kw: Any) -> Tensor:
        with torch.no_grad():
            out = real(q, k, v, **kw)
        return _FlashLike.apply(q, k, v, out)

    return attend


class _RecomputingLaCT(torch.autograd.Function):
    """LaCT that saves what the Triton kernel saves (inputs, per-chunk state) plus ``extra``."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, *keep: Tensor) -> Tensor:
        o = out.clone()
        ctx.save_for_backward(*keep)
        return o

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # pragma: no cover
        raise RuntimeError("the planner's LaCT stand-in only measures the forward")


def _recomputing_lact(real: Callable[..., Any], per_chunk_sum: bool) -> Callable[..., Any]:
    """Stand-in for the layer's ``lact`` call: runs the real op without a graph, then saves the
    fp32 folded q, k, v, lr, beta, the row norms and, per complete chunk, the weights used by
    the chunk (and momentum / accumulators; with ``per_chunk_sum`` also the summed update)."""

    def run(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, state: Any, options: Any, **kw: Any):
        with torch.no_grad():
            o, st = real(q, k, v, lr, state, options, **kw)
        B, T, H, _ = q.shape
        N = B * H

        def fold(x: Tensor) -> Tensor:  # [B, T, H, X] -> [B*H, T, X] fp32 (a new tensor)
            return x.float().permute(0, 2, 1, 3).reshape(N, T, -1).clone()

        keep = [fold(q), fold(k), fold(v), fold(lr)]
        beta = kw.get("beta")
        if beta is not None:
            keep.append(fold(beta.unsqueeze(-1)))
        w = [t for t in st.weights if t is not None]
        n_chunks = T // options.chunk_size if options.chunk_size else 0
        per = 1 + int(options.use_momentum) + int(options.weight_norm == "pre") + int(per_chunk_sum)
        if options.weight_norm is not None:
            keep += [q.new_empty(N, t.shape[-2], 1, dtype=torch.float32) for t in w]
        for _ in range(n_chunks * per):
            keep += [q.new_empty(N, *t.shape[-2:], dtype=torch.float32) for t in w]
        return _RecomputingLaCT.apply(o, *keep), st

    return run


@contextlib.contextmanager
def _gpu_kernels(per_chunk_sum: bool) -> Iterator[None]:
    import batchcraft.nn.lact as layer_mod

    old_attn, old_lact = layer_mod.window_attention, layer_mod.lact
    layer_mod.window_attention = _flash_attention(old_attn)  # type: ignore[assignment]
    layer_mod.lact = _recomputing_lact(old_lact, per_chunk_sum)  # type: ignore[assignment]
    try:
        yield
    finally:
        layer_mod.window_attention, layer_mod.lact = old_attn, old_lact  # type: ignore[assignment]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ activation trace
@dataclass(frozen=True)
class ActivationProfile:
    """Bytes autograd saves in one training forward (loss included), per rank.

    Attributes:
        block: saved by the largest block.
        outside: saved outside the blocks (embedding, final norm, head, loss).
        block_input: one block's input (what per-block activation checkpointing keeps).
        num_layers: L.
    """

    block: int
    outside: int
    block_input: int
    num_layers: int

    @property
    def total(self) -> int:
        """Everything the forward saves: ``outside + L * block``."""
        return self.outside + self.num_layers * self.block

    @property
    def checkpointed(self) -> int:
        """With per-block checkpointing: block inputs, the outside, one block being recomputed."""
        return self.outside + self.num_layers * self.block_input + self.block


def trace_activations(
    config: LaCTConfig,
    *,
    batch: int,
    context: int,
    dtype: torch.dtype = torch.float32,
    target: str = "gpu",
    traced_layers: int = 2,
    chunk_parallel: bool = False,
) -> ActivationProfile:
    """Measure the saved activations of one forward + loss without allocating them.

    Args:
        config: the model (its ``chunk_size`` as the op will see it).
        batch: sequences on this rank.
        context: tokens per sequence on this rank.
        dtype: compute dtype (bf16 for FSDP on GPU, fp32 otherwise).
        target: ``"gpu"`` (flash attention, Triton LaCT) or ``"cpu"`` (the code as it runs).
        traced_layers: blocks traced (the largest is counted ``num_layers`` times).
        chunk_parallel: count the summed update per chunk that the chunk-parallel path keeps.

    Returns:
        An :class:`ActivationProfile`.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from batchcraft.models.lact_lm import LaCTForCausalLM
    from batchcraft.recipes.lm import LMBatch, _loss

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    traced = replace(config, num_layers=min(traced_layers, config.num_layers))
    kernels = _gpu_kernels(chunk_parallel) if target == "gpu" else contextlib.nullcontext()
    marks: dict[int, tuple[int, int]] = {}
    with FakeTensorMode(), _default_dtype(dtype), kernels:
        model = LaCTForCausalLM(traced)
        counter = SavedBytes(exclude=model.parameters())  # parameters are counted apart
        model._check_ids = lambda *a, **k: None  # type: ignore[method-assign]  # reads values
        for i, blk in enumerate(model.blocks):
            blk.register_forward_pre_hook(
                lambda m, a, i=i: marks.__setitem__(i, (counter.total, 0))
            )
            blk.register_forward_hook(
                lambda m, a, o, i=i: marks.__setitem__(i, (marks[i][0], counter.total))
            )
        ids = torch.zeros(batch, context + 1, dtype=torch.long)
        with counter.saved_by_autograd():
            loss = _loss(model, LMBatch(ids[:, :-1], ids[:, 1:]))  # the recipe's loss
        blocks = [end - start for start, end in marks.values()]
        del loss
    per_block = max(blocks)
    outside = counter.total - sum(blocks)
    item = torch.finfo(dtype).bits // 8
    return ActivationProfile(
        block=per_block,
        outside=outside,
        block_input=batch * context * config.hidden_size * item,
        num_layers=config.num_layers,
    )


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
