"""Argument validation and the state <-> layout plumbing shared by every implementation.

``naive_lact`` and ``chunk_lact`` are both ``run_lact(<their Backend>, ...)``: this module checks
the inputs (clear ``ValueError``/``TypeError``), builds or continues a :class:`LaCTState`,
moves tensors into the backend's layout, runs the causal stream or an explicit schedule (per
document with ``cu_seqlens``) and returns ``(o [B, T, H, D], state)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.executor import Backend, Run, run_causal, run_schedule
from batchcraft.ops.lact.inner import INNER_LOSSES
from batchcraft.ops.lact.muon import ns_coefficients
from batchcraft.ops.lact.schedule import TTTOp, bidirectional_schedule, validate_schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.update import UpdateConfig

__all__ = ["Layout", "run_lact"]

Schedule = str | Sequence[TTTOp] | Sequence[tuple[str, int, int]]


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


def _check_tensor(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _finite(name: str, t: Tensor | None) -> None:
    if t is not None and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values; LaCT inputs must be finite")


def _validate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    weights: FastWeights,
    *,
    chunk_size: int,
    fast_weight: str,
    check: bool,
) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("lr", lr)):
        _check_tensor(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D], got shape {tuple(q.shape)}")
    B, T, H, D = q.shape
    if T < 1:
        raise ValueError("q must hold at least one token (T >= 1)")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(
                f"{name} must have q's shape [B, T, H, D] = {tuple(q.shape)}, got {tuple(t.shape)}"
            )
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if tuple(lr.shape) != (B, T, H, 3):
        raise ValueError(
            f"lr must be [B, T, H, 3] = {(B, T, H, 3)} (gate, up, down columns), got {tuple(lr.shape)}"
        )
    if beta is not None:
        _check_tensor("beta", beta)
        if tuple(beta.shape) != (B, T, H):
            raise ValueError(
                f"beta must be [B, T, H] = {(B, T, H)} or None, got {tuple(beta.shape)}"
            )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if fast_weight not in ("swiglu", "linear"):
        raise ValueError(f"fast_weight must be 'swiglu' or 'linear', got {fast_weight!r}")
    down = weights.down
    _check_tensor("state.down", down)
    if down.dim() not in (3, 4) or down.shape[-2] != D:
        raise ValueError(
            f"down weights must be [B, H, D={D}, Dh] or [H, D, Dh], got {tuple(down.shape)}"
        )
    lead = tuple(down.shape[:-2])
    if lead not in ((H,), (B, H)):
        raise ValueError(
            f"weights must have leading dims (H,) = ({H},) or (B, H) = ({B}, {H}), got {lead}"
        )
    Dh = down.shape[-1]
    if fast_weight == "linear":
        if Dh != D:
            raise ValueError(
                f"linear fast weights need down [.., D, D] with D={D}, got {tuple(down.shape)}"
            )
    else:
        if weights.gate is None or weights.up is None:
            raise ValueError(
                "fast_weight='swiglu' needs gate and up weights; pass fast_weight='linear' otherwise"
            )
        for name, m in (("gate", weights.gate), ("up", weights.up)):
            _check_tensor(f"state.{name}", m)
            if tuple(m.shape) != (*lead, Dh, D):
                raise ValueError(
                    f"{name} weights must be {(*lead, Dh, D)} to match down, got {tuple(m.shape)}"
                )
    for wm in weights:
        if wm is not None and wm.dtype != q.dtype:
            raise TypeError(f"fast weights must have q's dtype {q.dtype}, got {wm.dtype}")
    if check:
        for name, x in (("q", q), ("k", k), ("v", v), ("lr", lr), ("beta", beta)):
            _finite(name, x)
        for name, w in zip(FastWeights._fields, weights, strict=True):
            _finite(f"state.{name}", w)
        if beta is not None and bool(((beta < 0) | (beta > 1)).any()):
            raise ValueError("beta must lie in [0, 1]")


def _cu_bounds(cu_seqlens: Tensor | Sequence[int], T: int, B: int) -> list[int]:
    cu = [int(x) for x in (cu_seqlens.tolist() if isinstance(cu_seqlens, Tensor) else cu_seqlens)]
    if B != 1:
        raise ValueError(f"cu_seqlens packs documents along T and needs B == 1, got B={B}")
    if len(cu) < 2 or cu[0] != 0 or cu[-1] != T or any(a >= b for a, b in itertools.pairwise(cu)):
        raise ValueError(
            f"cu_seqlens must be strictly increasing from 0 to T={T}, e.g. [0, 5, {T}]; got {cu}"
        )
    return cu


def run_lact(
    make_backend: Callable[[UpdateConfig], tuple[Backend, Layout]],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    *,
    chunk_size: int,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    muon: str | None = None,
    muon_steps: int = 5,
    weight_norm: str | None = "post",
    fast_weight: str = "swiglu",
    cu_seqlens: Tensor | Sequence[int] | None = None,
    loss: str = "neg_dot",
    inner_steps: int = 1,
    check: bool = False,
) -> tuple[Tensor, LaCTState]:
    """Validate, then run one implementation. See :func:`batchcraft.ops.lact.lact` for arguments."""
    if isinstance(state, LaCTState):
        weights = state.weights
    elif isinstance(state, FastWeights):
        weights = state
    else:
        raise TypeError(f"state must be a LaCTState or FastWeights, got {type(state).__name__}")
    if fast_weight == "linear":
        weights = FastWeights(None, None, weights.down)
    _validate(
        q, k, v, lr, beta, weights, chunk_size=chunk_size, fast_weight=fast_weight, check=check
    )
    if muon not in (None, "tuned", "classic"):
        raise ValueError(f"muon must be None, 'tuned' or 'classic', got {muon!r}")
    if muon is not None:
        ns_coefficients(muon, muon_steps)
    if weight_norm not in ("post", "pre", None):
        raise ValueError(f"weight_norm must be 'post', 'pre' or None, got {weight_norm!r}")
    if loss not in INNER_LOSSES:
        raise ValueError(f"loss must be one of {INNER_LOSSES}, got {loss!r}")
    if not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")
    B, T, H, _ = q.shape

    if isinstance(state, LaCTState):
        if state.weight_norm != weight_norm:
            raise ValueError(
                f"state was initialised with weight_norm={state.weight_norm!r}, but weight_norm={weight_norm!r}"
            )
        if state.momentum is not None and beta is None:
            raise ValueError(
                "state carries a momentum buffer: pass beta (or start from a fresh state)"
            )
        if state.weights.down.dim() == 3:
            st = LaCTState.init(state.weights, weight_norm, beta is not None, batch_size=B)
        else:
            st = state
        if fast_weight == "linear" and st.weights.gate is not None:
            raise ValueError("state holds SwiGLU weights but fast_weight='linear'")
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

    ops: list[TTTOp] | None = None
    if isinstance(schedule, str):
        if schedule == "bidirectional":
            ops = bidirectional_schedule(T, T)
        elif schedule != "causal":
            raise ValueError(
                f"schedule must be 'causal', 'bidirectional' or a list of TTTOp, got {schedule!r}"
            )
    else:
        ops = validate_schedule(schedule, T)
    if ops is not None and (st.num_pending > 0):
        raise ValueError("only the causal schedule continues from a state with pending tokens")
    if st.num_tokens % chunk_size != st.num_pending and ops is None:
        raise ValueError(
            f"state has consumed {st.num_tokens} tokens with {st.num_pending} pending, inconsistent with "
            f"chunk_size={chunk_size}; continue a stream with the chunk_size it was started with"
        )

    cfg = UpdateConfig(
        muon=muon,
        muon_steps=muon_steps,
        weight_norm=weight_norm,
        loss=loss,
        inner_steps=inner_steps,
    )
    backend, lay = make_backend(cfg)
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
            return run_causal(backend, run, xq, xk, xv, xlr, xb, chunk_size)
        doc_ops = (
            ops
            if sl == slice(None)
            else bidirectional_schedule(sl.stop - sl.start, sl.stop - sl.start)
        )
        return run_schedule(backend, run, xq, xk, xv, xlr, xb, doc_ops)

    if cu_seqlens is None:
        run = fresh_run(st)
        o = lay.x_out(one(run, slice(None)), B, H)
    else:
        if st.num_tokens != 0:
            raise ValueError(
                "cu_seqlens starts every document from the initial weights: pass a fresh state"
            )
        if ops is not None and not (isinstance(schedule, str) and schedule == "bidirectional"):
            raise ValueError(
                "cu_seqlens supports schedule='causal' or 'bidirectional', not an explicit op list"
            )
        cu = _cu_bounds(cu_seqlens, T, B)
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
