"""State and layout plumbing of the fast paths (``chunk``, ``bf16``, ``compiled``, ``triton``).

Each fast path is ``run_lact(<its Backend factory>, ...)``: this module validates the call
(:func:`batchcraft.ops.lact.validate.check_call`), builds or continues a :class:`LaCTState`, moves
tensors into the backend's layout, runs the causal stream or an explicit schedule through the
generic executor (per document with ``cu_seqlens``) and returns ``(o [B, T, H, D], state)``.
The reference (``naive.py``) shares only the validation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from batchcraft.ops.lact.executor import Backend, Run, run_causal, run_schedule
from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.schedule import Schedule, bidirectional_schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.validate import check_call

__all__ = ["Layout", "run_lact"]


class Layout:
    """How a backend stores [B, T, H, X] tensors and [B, H, a, b] weights (identity by default)."""

    def x_in(self, x: Tensor) -> Tensor:  # [B, T, H, X] -> backend
        return x

    def x_out(self, x: Tensor, B: int, H: int) -> Tensor:  # backend -> [B, T, H, X]
        return x

    def beta_in(self, b: Tensor) -> Tensor:  # [B, T, H] -> backend
        return b

    def beta_out(self, b: Tensor, B: int, H: int) -> Tensor:
        return b

    def w_in(self, w: Tensor) -> Tensor:  # [B, H, a, b] -> backend
        return w

    def w_out(self, w: Tensor, B: int, H: int) -> Tensor:
        return w


def run_lact(
    make_backend: Callable[[LaCTOptions], tuple[Backend, Layout]],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    opts: LaCTOptions,
    *,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, LaCTState]:
    """Validate, then run one fast path. See :func:`batchcraft.ops.lact.lact` for arguments."""
    weights, ops, cu = check_call(
        q, k, v, lr, state, opts, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens
    )
    B, _, H, _ = q.shape
    weight_norm = opts.weight_norm
    if isinstance(state, LaCTState):
        if state.weights.down.dim() == 3:
            st = LaCTState.init(state.weights, weight_norm, beta is not None, batch_size=B)
        else:
            st = state
        if st.momentum is None and beta is not None:
            st = LaCTState(
                **{**st.__dict__, "momentum": LaCTState.init(st.weights, None, True).momentum}
            )
    else:
        st = LaCTState.init(
            weights,
            weight_norm,
            beta is not None,
            batch_size=B if weights.down.dim() == 3 else None,
        )

    backend, lay = make_backend(opts)
    dt = q.dtype
    lr = lr.to(dt)
    beta = None if beta is None else beta.to(dt)

    def fresh_run(s: LaCTState) -> Run:
        def ws(w: FastWeights | None) -> list[Tensor] | None:
            return None if w is None else [lay.w_in(t) for t in w if t is not None]

        w = ws(s.weights)
        assert w is not None
        return Run(
            w=w,
            acc=ws(s.accum),
            rho=ws(s.row_norms),
            mom=ws(s.momentum),
            pk=None if s.pending_k is None else lay.x_in(s.pending_k),
            pv=None if s.pending_v is None else lay.x_in(s.pending_v),
            plr=None if s.pending_lr is None else lay.x_in(s.pending_lr.to(dt)),
            pbeta=None if s.pending_beta is None else lay.beta_in(s.pending_beta.to(dt)),
            num_tokens=s.num_tokens,
        )

    def one(run: Run, sl: slice) -> Tensor:
        xq, xk, xv = lay.x_in(q[:, sl]), lay.x_in(k[:, sl]), lay.x_in(v[:, sl])
        xlr = lay.x_in(lr[:, sl])
        xb = None if beta is None else lay.beta_in(beta[:, sl])
        if ops is None:
            assert opts.chunk_size is not None  # checked by check_call
            return run_causal(backend, run, xq, xk, xv, xlr, xb, opts.chunk_size)
        doc_ops = (
            ops
            if sl == slice(None)
            else bidirectional_schedule(sl.stop - sl.start, sl.stop - sl.start)
        )
        return run_schedule(backend, run, xq, xk, xv, xlr, xb, doc_ops)

    if cu is None:
        run = fresh_run(st)
        o = lay.x_out(one(run, slice(None)), B, H)
    else:
        outs = []
        for s, e in itertools.pairwise(cu):
            run = fresh_run(st)  # state reset per document
            outs.append(lay.x_out(one(run, slice(s, e)), B, H))
        o = torch.cat(outs, dim=1)

    def wo(ts: list[Tensor] | None) -> FastWeights | None:
        if ts is None:
            return None
        ts2 = [lay.w_out(t, B, H) for t in ts]
        return (
            FastWeights(None, None, ts2[0])
            if len(ts2) == 1
            else FastWeights(ts2[0], ts2[1], ts2[2])
        )

    weights_out = wo(run.w)
    assert weights_out is not None
    new_state = LaCTState(
        weights=weights_out,
        accum=wo(run.acc),
        row_norms=wo(run.rho),
        momentum=wo(run.mom),
        pending_k=None if run.pk is None else lay.x_out(run.pk, B, H),
        pending_v=None if run.pv is None else lay.x_out(run.pv, B, H),
        pending_lr=None if run.plr is None else lay.x_out(run.plr, B, H),
        pending_beta=None if run.pbeta is None else lay.beta_out(run.pbeta, B, H),
        num_tokens=run.num_tokens,
        weight_norm=weight_norm,
    )
    return o, new_state
