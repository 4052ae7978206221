"""Reference LaCT: one readable loop written straight from the definition (the ground truth).

Self-contained on purpose: apart from the public containers (``FastWeights``, ``LaCTState``,
``TTTOp``), the options object and the argument validation, it shares no code with the fast
paths (no executor, state plumbing, update rule, Newton-Schulz or renorm), so "fast ==
reference" compares two independent implementations. Readable rather than fast: tensors stay in
the op layout (``x: [B, T, H, D]``, weights ``[B, H, out, in]``), every product is an ``einsum``,
and the inner step is autograd of the inner loss (:func:`torch.func.grad`)::

    L_m(W) = - sum_t lm[t] <f_W(k_t), v_t>            ("neg_dot")
    L_m(W) =   sum_t lm[t] ||f_W(k_t) - v_t||^2 / 2    ("mse")
    Delta_m = - dL_m / dW_m                            m in (gate, up, down), lr columns (0, 1, 2)

One update of the fast weights W with the tokens of a range (``inner_steps`` times)::

    momentum:  M <- Delta + mean_t(beta_t) * M ;  Delta <- M     (heavy ball, M0 = 0)
    Muon:      Delta <- NS(Delta)  for each matrix                (M keeps the pre-NS sum)
    "post":    W <- renorm(W + Delta)
    "pre":     A <- A + Delta ;  W <- renorm(A)                   (A0 = W0)
    None:      W <- W + Delta
    renorm(X) = X / (||X||_row + 1e-5) * rho ,  rho = ||W0||_row  (rows over the input dim)

The causal stream: every token reads the weights of the chunks strictly before its own (chunk
boundaries at absolute positions that are multiples of C); a chunk updates the weights once all
its C tokens have been read. Works in fp32 and fp64 and is differentiable end to end.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.options import LaCTOptions, resolve_options
from batchcraft.ops.lact.schedule import Schedule, TTTOp
from batchcraft.ops.lact.state import FastWeights, LaCTState
from batchcraft.ops.lact.validate import check_call

__all__ = ["naive_lact"]

# Newton-Schulz (a, b, c) triples, written out from the published schedules (not imported, so a
# typo in the fast path's table is caught by the equality tests).
_NS_TUNED = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
_NS_CLASSIC = (3.4445, -4.7750, 2.0315)  # repeated muon_steps times
_NS_EPS = 1e-7  # X0 = G / (||G||_F + eps)
_RENORM_EPS = 1e-5  # renorm(X) = X / (||X||_row + eps) * rho


# ------------------------------------------------------------------------------ the maths
def _f(w: Sequence[Tensor], x: Tensor) -> Tensor:
    """``f_W(x)``: x [B, S, H, D] -> [B, S, H, D]; w = [gate, up, down] or [down] (linear)."""
    if len(w) == 1:
        return torch.einsum("bhij,bshj->bshi", w[0], x)
    gate, up, down = w
    zg = torch.einsum("bhij,bshj->bshi", gate, x)  # [B, S, H, Dh]
    zu = torch.einsum("bhij,bshj->bshi", up, x)
    return torch.einsum("bhij,bshj->bshi", down, torch.nn.functional.silu(zg) * zu)


def _descent(w: list[Tensor], k: Tensor, v: Tensor, lr: Tensor, loss: str) -> list[Tensor]:
    """``Delta_m = -dL_m/dW_m`` for every matrix, by autograd of the inner loss.

    k, v: [B, S, H, D]; lr: [B, S, H, 3] (gate, up, down columns; the linear variant uses down).
    """
    columns = [0, 1, 2] if len(w) == 3 else [2]
    deltas = []
    for i, col in enumerate(columns):
        lam = lr[..., col]  # [B, S, H]

        def inner_loss(wi: Tensor, i: int = i, lam: Tensor = lam) -> Tensor:
            ws = list(w)
            ws[i] = wi
            f = _f(ws, k)  # [B, S, H, D]
            if loss == "mse":
                per_token = 0.5 * (f - v).pow(2).sum(-1)
            else:
                per_token = -(f * v).sum(-1)
            return (lam * per_token).sum()  # (b, h) slices do not interact: one sum is fine

        deltas.append(-torch.func.grad(inner_loss)(w[i]))
    return deltas


def _newton_schulz(g: Tensor, kind: str, steps: int) -> Tensor:
    """``NS(G)`` over the last two dims: transpose tall matrices, Frobenius-normalise, iterate."""
    coeffs = list(_NS_TUNED[:steps]) if kind == "tuned" else [_NS_CLASSIC] * steps
    tall = g.shape[-2] > g.shape[-1]
    x = g.mT if tall else g
    x = x / (torch.linalg.matrix_norm(x, ord="fro", keepdim=True) + _NS_EPS)
    for a, b, c in coeffs:
        A = x @ x.mT
        x = a * x + (b * A + c * (A @ A)) @ x
    return x.mT if tall else x


def _renorm(x: Tensor, rho: Tensor) -> Tensor:
    """Rows of ``x`` rescaled to the reference norms ``rho`` [..., rows, 1]."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + _RENORM_EPS) * rho


# ------------------------------------------------------------------------------ the state
class _Stream:
    """Fast weights and everything else a call carries, as plain lists in [B, H, ...]."""

    def __init__(
        self,
        w: list[Tensor],
        acc: list[Tensor] | None,
        rho: list[Tensor] | None,
        mom: list[Tensor] | None,
        pending: list[Tensor | None] | None,
        n: int,
    ) -> None:
        self.w, self.acc, self.rho, self.mom = w, acc, rho, mom
        self.pending = pending  # [k, v, lr, beta] of the unfinished chunk, or None
        self.n = n  # tokens consumed (absolute position of the next token)

    def copy(self) -> _Stream:
        return _Stream(
            list(self.w),
            None if self.acc is None else list(self.acc),
            None if self.rho is None else list(self.rho),
            None if self.mom is None else list(self.mom),
            None if self.pending is None else list(self.pending),
            self.n,
        )

    def update(self, k: Tensor, v: Tensor, lr: Tensor, beta: Tensor | None, o: LaCTOptions) -> None:
        """ONE update with all tokens of the range (k, v [B, S, H, D])."""
        for _ in range(o.inner_steps):
            delta = _descent(self.w, k, v, lr, o.inner_loss)
            if self.mom is not None:
                assert beta is not None
                mu = beta.mean(dim=1)[..., None, None]  # [B, S, H] -> [B, H, 1, 1]
                self.mom = [d + mu * m for d, m in zip(delta, self.mom, strict=True)]
                delta = list(self.mom)
            if o.use_muon:
                delta = [_newton_schulz(d, o.muon, o.muon_steps) for d in delta]
            if o.weight_norm == "post":
                assert self.rho is not None
                self.w = [
                    _renorm(w + d, r) for w, d, r in zip(self.w, delta, self.rho, strict=True)
                ]
            elif o.weight_norm == "pre":
                assert self.rho is not None and self.acc is not None
                self.acc = [a + d for a, d in zip(self.acc, delta, strict=True)]
                self.w = [_renorm(a, r) for a, r in zip(self.acc, self.rho, strict=True)]
            else:
                self.w = [w + d for w, d in zip(self.w, delta, strict=True)]


def _present(w: FastWeights | None) -> list[Tensor] | None:
    return None if w is None else [t for t in w if t is not None]


def _start(
    state: LaCTState | FastWeights,
    weights: FastWeights,
    o: LaCTOptions,
    B: int,
    dtype: torch.dtype,
    momentum: bool,
) -> _Stream:
    """The stream a call starts from: a continued ``LaCTState`` or fresh initial weights."""
    if isinstance(state, LaCTState) and state.weights.down.dim() == 4:
        w = [t for t in weights if t is not None]
        mom = _present(state.momentum)
        if mom is None and momentum:
            mom = [torch.zeros_like(t) for t in w]
        pending: list[Tensor | None] | None = None
        if state.num_pending > 0:
            assert state.pending_k is not None and state.pending_v is not None
            assert state.pending_lr is not None
            pb = state.pending_beta
            pending = [
                state.pending_k,
                state.pending_v,
                state.pending_lr.to(dtype),
                None if pb is None else pb.to(dtype),
            ]
        return _Stream(
            w, _present(state.accum), _present(state.row_norms), mom, pending, state.num_tokens
        )
    # per-head W0 [H, ...] is shared by every sequence: a broadcast view, so gradients reach it
    w = [
        t if t.dim() == 4 else t.unsqueeze(0).expand(B, *t.shape) for t in weights if t is not None
    ]
    rho = None
    if o.weight_norm is not None:
        rho = [torch.linalg.vector_norm(t, dim=-1, keepdim=True) for t in w]  # ||W0||_row
    acc = list(w) if o.weight_norm == "pre" else None
    mom = [torch.zeros_like(t) for t in w] if momentum else None
    return _Stream(w, acc, rho, mom, None, 0)


# ------------------------------------------------------------------------------ the schedules
def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else torch.cat([a, b], dim=1)


def _causal(
    s: _Stream,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    C: int,
    o: LaCTOptions,
) -> Tensor:
    """Read, then remember, one piece at a time; a piece never crosses a chunk boundary."""
    T = q.shape[1]
    outs = []
    t = 0
    while t < T:
        e = min(T, t + C - s.n % C)  # up to the next multiple of C (absolute position)
        outs.append(_f(s.w, q[:, t:e]))  # the current chunk is not yet in the weights
        new = [k[:, t:e], v[:, t:e], lr[:, t:e], None if beta is None else beta[:, t:e]]
        old = s.pending or [None, None, None, None]
        s.pending = [_cat(a, b) for a, b in zip(old, new, strict=True)]
        s.n += e - t
        t = e
        if s.n % C == 0:  # the chunk is complete: one update with all its tokens
            pk, pv, plr, pbeta = s.pending
            assert pk is not None and pv is not None and plr is not None
            s.update(pk, pv, plr, pbeta, o)
            s.pending = None
    return torch.cat(outs, dim=1)


def _scheduled(
    s: _Stream,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    ops: Sequence[TTTOp],
    o: LaCTOptions,
) -> Tensor:
    """Run an explicit op list in order; tokens never applied get zeros."""
    out = torch.zeros_like(q)
    for kind, a, b in ops:
        if kind in ("apply", "apply_update"):
            out[:, a:b] = _f(s.w, q[:, a:b])
        if kind in ("update", "apply_update", "update_apply"):
            s.update(k[:, a:b], v[:, a:b], lr[:, a:b], None if beta is None else beta[:, a:b], o)
        if kind == "update_apply":
            out[:, a:b] = _f(s.w, q[:, a:b])
    s.n += q.shape[1]
    return out


def _fast_weights(ts: list[Tensor] | None) -> FastWeights | None:
    if ts is None:
        return None
    return FastWeights(None, None, ts[0]) if len(ts) == 1 else FastWeights(ts[0], ts[1], ts[2])


def naive_lact(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    options: LaCTOptions | None = None,
    *,
    schedule: Schedule = "causal",
    beta: Tensor | None = None,
    cu_seqlens: Tensor | Sequence[int] | None = None,
    **kw: Any,
) -> tuple[Tensor, LaCTState]:
    """Reference LaCT (autograd inner gradient, a loop over ranges); the contract of
    :func:`batchcraft.ops.lact.lact`. ``recompute`` and ``lact_impl`` are ignored."""
    o = resolve_options(options, kw, beta_given=beta is not None)
    weights, ops, cu = check_call(
        q, k, v, lr, state, o, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens
    )
    B, T = q.shape[:2]
    lr = lr.to(q.dtype)
    beta = None if beta is None else beta.to(q.dtype)
    start = _start(state, weights, o, B, q.dtype, momentum=beta is not None)

    def run(s: _Stream, a: int, b: int, doc_ops: Sequence[TTTOp] | None) -> Tensor:
        xs = (q[:, a:b], k[:, a:b], v[:, a:b], lr[:, a:b], None if beta is None else beta[:, a:b])
        if doc_ops is None:
            assert o.chunk_size is not None  # checked by check_call
            return _causal(s, *xs, o.chunk_size, o)
        return _scheduled(s, *xs, doc_ops, o)

    if cu is None:
        s = start.copy()
        out = run(s, 0, T, ops)
    else:  # every document starts from the initial weights
        outs = []
        for a, b in itertools.pairwise(cu):
            s = start.copy()
            doc = None if ops is None else [TTTOp("update", 0, b - a), TTTOp("apply", 0, b - a)]
            outs.append(run(s, a, b, doc))
        out = torch.cat(outs, dim=1)

    pk, pv, plr, pbeta = s.pending or [None, None, None, None]
    weights_out = _fast_weights(s.w)
    assert weights_out is not None
    final = LaCTState(
        weights=weights_out,
        accum=_fast_weights(s.acc),
        row_norms=_fast_weights(s.rho),
        momentum=_fast_weights(s.mom),
        pending_k=pk,
        pending_v=pv,
        pending_lr=plr,
        pending_beta=pbeta,
        num_tokens=s.n,
        weight_norm=o.weight_norm,
    )
    return out, final
