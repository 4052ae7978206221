"""Measuring training memory: bytes held by tensors, and activations traced without allocating.

* :class:`SavedBytes` adds up the unique storages behind tensors (views counted once), e.g. every
  tensor autograd saves for backward (:meth:`SavedBytes.saved_by_autograd`);
  :func:`state_bytes` counts a rank's parameters, gradients and optimizer state (FSDP2: local
  shards); :func:`measure_step_memory` does both around one real training step.
* :func:`trace_activations` measures the saved activations of a forward + loss of the LM without
  allocating them: the model runs under ``FakeTensorMode`` while ``saved_tensors_hooks`` count
  the unique storages saved (parameters excluded). Two blocks are traced and the largest is
  counted ``num_layers`` times (the blocks have identical shapes; tested equal to tracing all).
* GPU kernels (``target="gpu"``): attention is counted as a flash / flex kernel, which saves
  ``q, k, v``, the output and an fp32 log-sum-exp (the CPU path saves per-block scores); the LaCT
  op as the Triton kernel, which saves its fp32 inputs and, per complete chunk, the fast weights
  (and momentum / pre-norm accumulators), recomputing the rest in backward (the stand-in saves
  exactly the bytes ``triton_lact`` saves: tested). ``target="cpu"`` traces the code as it runs
  on CPU (tested equal to a real forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from batchcraft.models.lact_config import LaCTConfig

__all__ = [
    "TARGETS",
    "ActivationProfile",
    "SavedBytes",
    "measure_step_memory",
    "state_bytes",
    "trace_activations",
]

TARGETS = ("gpu", "cpu")


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
        """Count every tensor autograd saves for backward inside the block.

        RoPE range tables are computed per call inside (as a fake-tensor trace computes them):
        a process-wide cached table is shared, persistent memory, not an activation.
        """
        from batchcraft.nn.rope import table_cache

        def pack(t: Tensor) -> Tensor:
            self.add(t)
            return t

        with table_cache(False), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
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
