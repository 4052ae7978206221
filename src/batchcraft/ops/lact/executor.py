"""The generic schedule executor shared by the fast paths.

An implementation is a :class:`Backend`: it knows its tensor layout and provides ``apply``
(``f_W(q)``) and ``grad`` (``-grad L`` of one range); it may override :meth:`Backend.chunks`
with a fused loop over complete causal chunks. Both layouts keep time on dim 1
(reference ``[B, T, H, D]``, fast path ``[B*H, T, D]``), so slicing is shared.

Weights travel as a list of matrices: ``[gate, up, down]`` (SwiGLU) or ``[down]`` (linear).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.schedule import TTTOp
from batchcraft.ops.lact.update import update_rule

__all__ = ["Backend", "Run", "run_causal", "run_schedule"]


@dataclass
class Run:
    """Mutable per-call state in the backend's layout."""

    w: list[Tensor]
    acc: list[Tensor] | None
    rho: list[Tensor] | None
    mom: list[Tensor] | None
    pk: Tensor | None = None
    pv: Tensor | None = None
    plr: Tensor | None = None
    pbeta: Tensor | None = None
    num_tokens: int = 0

    @property
    def num_pending(self) -> int:
        return 0 if self.pk is None else int(self.pk.shape[1])


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if b is None:
        return a
    return b if a is None else torch.cat([a, b], dim=1)


class Backend(abc.ABC):
    """One implementation of ``apply`` and ``grad`` in a fixed layout (abstract)."""

    def __init__(self, cfg: LaCTOptions) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def apply(self, w: Sequence[Tensor], q: Tensor) -> Tensor:
        """Implemented by each layout."""

    @abc.abstractmethod
    def grad(self, w: Sequence[Tensor], k: Tensor, v: Tensor, lr: Tensor) -> list[Tensor]:
        """Implemented by each layout."""

    @abc.abstractmethod
    def mu(self, beta: Tensor) -> Tensor:
        """Chunk-mean momentum gate broadcastable to the weights, from beta of one range."""

    def stacked(self, w: Sequence[Tensor]) -> list[int]:
        """Per matrix, how many NS matrices are concatenated along dim -2."""
        return [1] * len(w)

    def update(self, run: Run, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None) -> None:
        """ONE update using all tokens of the range (``inner_steps`` descent steps)."""
        for _ in range(self.cfg.inner_steps):
            delta = self.grad(run.w, k, v, lr)
            mu = self.mu(beta) if (run.mom is not None and beta is not None) else None
            w, acc, mom = update_rule(
                run.w,
                delta,
                accum=run.acc,
                rho=run.rho,
                momentum=run.mom,
                mu=mu,
                cfg=self.cfg,
                stacked=self.stacked(run.w),
            )
            run.w = w
            if acc is not None:
                run.acc = acc
            if mom is not None:
                run.mom = mom

    def chunks(
        self, run: Run, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, C: int
    ) -> Tensor:
        """Apply-then-update on ``n`` complete chunks (time length ``n*C``); returns outputs."""
        # split (not per-chunk slicing): one SplitBackward gathers all chunk gradients at once,
        # where n slices would each materialise a full-length zero gradient (quadratic in T)
        qs, ks, vs, lrs = (x.split(C, dim=1) for x in (q, k, v, lr))
        bs = [None] * len(qs) if beta is None else beta.split(C, dim=1)
        outs = []
        for qj, kj, vj, lj, bj in zip(qs, ks, vs, lrs, bs, strict=True):
            outs.append(self.apply(run.w, qj))
            self.update(run, kj, vj, lj, bj)
        return torch.cat(outs, dim=1)


def run_causal(
    backend: Backend,
    run: Run,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    C: int,
) -> Tensor:
    """Causal step on new tokens continuing from ``run``; returns outputs [.., T, ..]."""
    T = q.shape[1]
    outs: list[Tensor] = []
    i = 0
    P = run.num_pending
    if P > 0:  # finish the pending chunk first
        m = min(C - P, T)
        outs.append(backend.apply(run.w, q[:, :m]))
        run.pk, run.pv = _cat(run.pk, k[:, :m]), _cat(run.pv, v[:, :m])
        run.plr = _cat(run.plr, lr[:, :m])
        run.pbeta = _cat(run.pbeta, None if beta is None else beta[:, :m])
        if P + m == C:
            assert run.pk is not None and run.pv is not None and run.plr is not None
            backend.update(run, run.pk, run.pv, run.plr, run.pbeta)
            run.pk = run.pv = run.plr = run.pbeta = None
        i = m
    n = (T - i) // C
    if n > 0:
        e = i + n * C
        outs.append(
            backend.chunks(
                run,
                q[:, i:e],
                k[:, i:e],
                v[:, i:e],
                lr[:, i:e],
                None if beta is None else beta[:, i:e],
                C,
            )
        )
        i = e
    if i < T:  # tail: apply with the current weights, keep the tokens pending
        outs.append(backend.apply(run.w, q[:, i:]))
        run.pk, run.pv, run.plr = k[:, i:], v[:, i:], lr[:, i:]
        run.pbeta = None if beta is None else beta[:, i:]
    run.num_tokens += T
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def run_schedule(
    backend: Backend,
    run: Run,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    ops: Sequence[TTTOp],
) -> Tensor:
    """Execute an explicit op list; tokens never applied get zeros."""
    o = torch.zeros_like(q)
    for op in ops:
        s, e = op.start, op.end
        if op.kind in ("apply", "apply_update"):
            o[:, s:e] = backend.apply(run.w, q[:, s:e])
        if op.kind in ("update", "apply_update", "update_apply"):
            backend.update(
                run, k[:, s:e], v[:, s:e], lr[:, s:e], None if beta is None else beta[:, s:e]
            )
        if op.kind == "update_apply":
            o[:, s:e] = backend.apply(run.w, q[:, s:e])
    run.num_tokens += q.shape[1]
    return o
