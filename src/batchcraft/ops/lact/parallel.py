"""Chunk-parallel LaCT: one chunk's tokens split across the ranks of a process group.

The inner gradient of an update is a sum over the chunk's tokens, every term evaluated at the
same weights::

    Delta_m = sum_t Delta_m(t) = sum_r (sum_{t on rank r} Delta_m(t))

so each rank computes the share of its own tokens and ONE all-reduce per update sums the shares
(the momentum gates' sum and token count ride in the same buffer, so the chunk-mean of beta is the
mean over every rank's tokens). Momentum, Muon and the renorm then run identically on every rank,
which therefore holds identical fast weights; each rank applies them to its own queries.

Backward: every rank computes the same function of the summed update, so the adjoint of the sum
is an all-reduce of the cotangents (:func:`all_reduce_sum`). Gradients of the tokens are exact on
their own rank; gradients of replicated inputs (the initial weights, the layer's parameters) are
partial per rank and sum to the exact gradient over ranks, which is what DDP / FSDP reduce anyway.

What a rank holds:

* explicit schedules (``"bidirectional"``, a :class:`TTTOp` list): a slice of the set's tokens of
  any size; every rank runs the same op list over its own slice, each ``update`` uses the union of
  every rank's range;
* ``"causal"``: the chunk of C tokens is the union of every rank's local chunk of ``C / P``
  tokens (``P`` ranks, ``C % P == 0``); rank ``r`` holds, for every chunk ``j``, the global tokens
  ``[j*C + r*C/P, j*C + (r+1)*C/P)`` (:func:`shard_chunks` / :func:`chunk_positions`). Every rank
  must pass the same number of tokens per call (checked when ``options.check``).

Communication per update and sequence: ``3*H*D*Dh`` fast-weight elements (``D*D`` for the linear
variant), plus ``H + 1`` with momentum, whatever the chunk size; each rank computes ``C / P`` of
the chunk's ``18*D*Dh`` FLOPs per token and head, i.e. about ``6*C/P`` FLOPs per element sent.

Supported paths: ``impl`` ``"auto"``, ``"chunk"`` or ``"bf16"`` (the chunk path with an all-reduce
between the local gradient and the update rule; ``recompute=True`` checkpoints the local parts,
never the collective). ``"naive"``, ``"compiled"``, ``"triton"`` and ``cu_seqlens`` raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from batchcraft.ops.lact.chunk import _ChunkBackend, _Folded
from batchcraft.ops.lact.executor import Backend, Run
from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.runner import Layout, run_lact
from batchcraft.ops.lact.schedule import Schedule, TTTOp
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.update import update_rule

__all__ = [
    "PARALLEL_IMPLS",
    "all_gather_seq",
    "all_reduce_sum",
    "chunk_positions",
    "parallel_lact",
    "rank_world",
    "shard_chunks",
    "unshard_chunks",
]

PARALLEL_IMPLS: tuple[str, ...] = ("auto", "chunk", "bf16")
Group = dist.ProcessGroup


def rank_world(group: Group | None) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


# ------------------------------------------------------------------ differentiable collectives
class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` on every rank; backward: ``dx_r = sum_r' dy_r'`` (the same all-reduce)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group | None) -> Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def all_reduce_sum(x: Tensor, group: Group | None = None) -> Tensor:
    """Sum ``x`` over the ranks of ``group``, differentiably (identity for a world of one).

    Every rank must call it, with the same shape, in the same order (forward and backward).
    """
    if rank_world(group)[1] == 1:
        return x
    return _AllReduceSum.apply(x, group)


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``x`` along dim 0; backward: reduce-scatter (sum) of the
    cotangent, each rank keeping the slice of its own input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Group | None) -> Tensor:
        ctx.group = group
        _, world = rank_world(group)
        x = x.contiguous()
        out = x.new_empty(world * x.shape[0], *x.shape[1:])
        dist.all_gather_into_tensor(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        _, world = rank_world(ctx.group)
        grad = grad.contiguous()
        out = grad.new_empty(grad.shape[0] // world, *grad.shape[1:])
        dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


def all_gather_seq(x: Tensor, group: Group | None = None, *, dim: int = 1) -> Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order, differentiably.

    All ranks must pass the same shape. Returns ``[..., P * x.shape[dim], ...]``.
    """
    if rank_world(group)[1] == 1:
        return x
    y = _AllGather.apply(x.movedim(dim, 0), group)  # [P * n, ...]
    return y.movedim(0, dim)


# ------------------------------------------------------------------ the causal layout
def _local_chunk(chunk_size: int, world: int) -> int:
    """c = C / P: the tokens of every chunk one rank holds (causal layout)."""
    if chunk_size % world:
        raise ValueError(
            f"chunk parallelism over {world} ranks needs chunk_size ({chunk_size}) divisible by "
            f"the number of ranks; use a chunk_size that is a multiple of {world}"
        )
    return chunk_size // world


def chunk_positions(n_local: int, chunk_size: int, rank: int, world: int) -> Tensor:
    """Global token index of each of this rank's ``n_local`` tokens (the causal layout).

    Complete chunks: local token ``i`` is global ``(i // c) * C + rank * c + i % c`` with
    ``c = C / P``; the ``m < c`` tail tokens of every rank form the global tail, rank-major:
    ``n * C + rank * m + (i - n * c)``. Returns ``[n_local]`` int64.
    """
    c = _local_chunk(chunk_size, world)
    n, m = divmod(n_local, c)  # complete local chunks, tail tokens
    i = torch.arange(n * c)
    full = (i // c) * chunk_size + rank * c + i % c
    tail = n * chunk_size + rank * m + torch.arange(m)
    return torch.cat([full, tail])


def shard_chunks(x: Tensor, chunk_size: int, rank: int, world: int, *, dim: int = 1) -> Tensor:
    """This rank's tokens of a global sequence in the causal layout (:func:`chunk_positions`).

    Args:
        x: ``[..., T, ...]`` with time on ``dim``; ``T = n * C + P * m`` with ``m < C / P``.
        chunk_size: C (divisible by ``world``).
        rank: this rank.
        world: number of ranks P.

    Returns:
        ``[..., T / P, ...]`` (a copy).
    """
    T = x.shape[dim]
    n, rest = divmod(T, chunk_size)
    if rest % world:
        raise ValueError(
            f"the tail of T={T} after complete chunks of {chunk_size} ({rest} tokens) must split "
            f"evenly over {world} ranks"
        )
    n_local = n * (chunk_size // world) + rest // world
    return x.index_select(dim, chunk_positions(n_local, chunk_size, rank, world).to(x.device))


def unshard_chunks(parts: Sequence[Tensor], chunk_size: int, *, dim: int = 1) -> Tensor:
    """Inverse of :func:`shard_chunks`: the global sequence from every rank's part (rank order)."""
    world = len(parts)
    n_local = parts[0].shape[dim]
    idx = torch.cat([chunk_positions(n_local, chunk_size, r, world) for r in range(world)])
    x = torch.cat(list(parts), dim=dim)
    return x.index_select(dim, torch.argsort(idx).to(x.device))


# ------------------------------------------------------------------ the backend
class _ParallelBackend(_ChunkBackend):
    """The chunk path with every update's inner gradient summed over the ranks of a group."""

    inference_fast = False  # the fused buffer loop has no collective; ``chunks`` is replaced

    def __init__(self, cfg: LaCTOptions, group: Group | None) -> None:
        super().__init__(cfg)
        self.group = group

    def _maybe_ckpt(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _reduce(
        self, delta: list[Tensor], beta: Tensor | None
    ) -> tuple[list[Tensor], Tensor | None]:
        """ONE all-reduce of the gradient shares (+ beta sums and token count): ``(delta, mu)``."""
        dt = torch.promote_types(delta[0].dtype, torch.float32)  # sum bf16 shares in fp32
        parts = [d.reshape(-1).to(dt) for d in delta]
        if beta is not None:  # [N, S, 1]
            parts.append(beta.sum(dim=1).reshape(-1).to(dt))  # [N]
            parts.append(beta.new_full((1,), beta.shape[1], dtype=dt))  # tokens of this rank
        flat = all_reduce_sum(torch.cat(parts), self.group)
        sizes = [p.numel() for p in parts]
        pieces = flat.split(sizes)
        out = [p.view(d.shape) for p, d in zip(pieces, delta, strict=False)]
        mu = None
        if beta is not None:
            mu = (pieces[-2] / pieces[-1]).view(-1, 1, 1)  # [N, 1, 1], mean over all ranks
        return out, mu

    def update(self, run: Run, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None) -> None:
        for _ in range(self.cfg.inner_steps):
            local = self._maybe_ckpt(self.grad, run.w, k, v, lr)
            delta, mu = self._reduce(local, beta if run.mom is not None else None)
            w, acc, mom = self._maybe_ckpt(self._rule, run.w, delta, run.acc, run.rho, run.mom, mu)
            run.w = w
            if acc is not None:
                run.acc = acc
            if mom is not None:
                run.mom = mom

    def _rule(
        self,
        w: list[Tensor],
        delta: list[Tensor],
        acc: list[Tensor] | None,
        rho: list[Tensor] | None,
        mom: list[Tensor] | None,
        mu: Tensor | None,
    ) -> tuple[list[Tensor], list[Tensor] | None, list[Tensor] | None]:
        return update_rule(w, delta, accum=acc, rho=rho, momentum=mom, mu=mu, cfg=self.cfg)

    def chunks(
        self, run: Run, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, C: int
    ) -> Tensor:
        qs, ks, vs, lrs = (x.split(C, dim=1) for x in (q, k, v, lr))
        bs = [None] * len(qs) if beta is None else beta.split(C, dim=1)
        outs = []
        for qj, kj, vj, lj, bj in zip(qs, ks, vs, lrs, bs, strict=True):
            outs.append(self._maybe_ckpt(self.apply, run.w, qj))
            self.update(run, kj, vj, lj, bj)
        return torch.cat(outs, dim=1)


def _count_updates(schedule: Schedule, state: LaCTState | FastWeights, T: int, c: int) -> int:
    if isinstance(schedule, str):
        if schedule == "bidirectional":
            return 1
        pending = state.num_pending if isinstance(state, LaCTState) else 0
        return (pending + T) // c
    return sum(TTTOp(*op).kind != "apply" for op in schedule)


def _check_ranks(
    group: Group | None, q: Tensor, n_updates: int, causal: bool, pending: int
) -> None:
    """Every rank must run the same number of updates (causal: the same local lengths)."""
    B, T, H, D = q.shape
    mine = [n_updates, B, H, D] + ([T, pending] if causal else [])
    x = torch.tensor(mine + [-m for m in mine], dtype=torch.int64, device=q.device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    hi, neg_lo = x.tolist()[: len(mine)], x.tolist()[len(mine) :]
    if any(a != -b for a, b in zip(hi, neg_lo, strict=True)):
        names = ["updates", "B", "H", "D"] + (["local T", "pending tokens"] if causal else [])
        diff = [n for n, a, b in zip(names, hi, neg_lo, strict=True) if a != -b]
        raise ValueError(
            f"chunk-parallel ranks disagree on {diff}: every rank of the group must pass the same "
            "B, H, D and number of updates (causal: the same number of local tokens)"
        )


def parallel_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions,
    *,
    group: Group | None,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, LaCTState]:
    """LaCT with each update's tokens spread over the ranks of ``group`` (see the module doc).

    Args:
        q, k, v: this rank's tokens [B, T_local, H, D] (causal: the layout of
            :func:`shard_chunks`).
        lr: [B, T_local, H, 3].
        state: initial ``FastWeights`` (identical on every rank) or a ``LaCTState`` returned by
            a previous chunk-parallel call on this rank.
        options: the op options; ``chunk_size`` is the GLOBAL chunk C (each rank holds ``C/P``).
        group: the process group (``None``: the default group).
        schedule: ``"causal"``, ``"bidirectional"`` or a :class:`TTTOp` list over local indices.
        beta: momentum gates [B, T_local, H] or None.
        cu_seqlens: not supported (raises).

    Returns:
        ``(o [B, T_local, H, D], state)``; the weights in the state are identical on every rank.
    """
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if cu_seqlens is not None:
        raise ValueError(
            "cu_seqlens (packed documents) is not supported with chunk parallelism (group=...): "
            "run packed batches without a group"
        )
    if options.lact_impl not in PARALLEL_IMPLS:
        raise ValueError(
            f"chunk parallelism (group=...) runs on lact_impl in {PARALLEL_IMPLS}, got "
            f"{options.lact_impl!r}"
        )
    _, world = rank_world(group)
    opts = options
    causal = isinstance(schedule, str) and schedule == "causal"
    if causal:
        if options.chunk_size is None:
            raise ValueError("the causal schedule needs chunk_size (tokens per update), e.g. 2048")
        opts = dataclasses.replace(options, chunk_size=_local_chunk(options.chunk_size, world))
    if options.check and world > 1:
        pending = state.num_pending if isinstance(state, LaCTState) else 0
        n_up = _count_updates(schedule, state, q.shape[1], opts.chunk_size or 1)
        _check_ranks(group, q, n_up, causal, pending)

    def make(cfg: LaCTOptions) -> tuple[Backend, Layout]:
        return _ParallelBackend(cfg, group), _Folded()

    def run(
        q: Tensor, k: Tensor, v: Tensor, lr: Tensor, state: LaCTState | FastWeights,
        options: LaCTOptions, **kw: Any,
    ) -> tuple[Tensor, LaCTState]:  # fmt: skip
        return run_lact(make, q, k, v, lr, state, options, **kw)

    low = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(q.device.type)
    if options.lact_impl == "bf16" or (options.lact_impl == "auto" and low):
        from batchcraft.ops.lact.bf16 import mixed_precision

        return mixed_precision(run)(q, k, v, lr, state, opts, schedule=schedule, beta=beta)
    return run(q, k, v, lr, state, opts, schedule=schedule, beta=beta)
