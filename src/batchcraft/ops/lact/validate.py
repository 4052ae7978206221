"""Argument validation shared by every LaCT implementation, the reference included.

:func:`check_call` checks one op call (tensor shapes and dtypes, fast-weight shapes, the state,
the schedule, ``cu_seqlens``, momentum gates vs ``options.use_momentum``) and raises a
``ValueError``/``TypeError`` that says what is right. It computes nothing: it returns the
normalised pieces every implementation starts from (:class:`CallPlan`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from batchcraft.ops.lact.options import LaCTOptions
from batchcraft.ops.lact.schedule import Schedule, TTTOp, validate_schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState

__all__ = ["CallPlan", "check_call"]


class CallPlan(NamedTuple):
    """What a validated call runs.

    Attributes:
        weights: the starting fast weights (``gate``/``up`` dropped for the linear variant).
        ops: the explicit op list, or ``None`` for the causal stream.
        cu: packed-document boundaries ``[0, ..., T]`` or ``None``.
    """

    weights: FastWeights
    ops: list[TTTOp] | None
    cu: list[int] | None


def _check_tensor(name: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _finite(name: str, t: Tensor | None) -> None:
    if t is not None and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values; LaCT inputs must be finite")


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    beta: Tensor | None,
    weights: FastWeights,
    opts: LaCTOptions,
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
    if opts.fast_weight == "linear":
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
    if opts.check:
        for name, x in (("q", q), ("k", k), ("v", v), ("lr", lr), ("beta", beta)):
            _finite(name, x)
        for name, w in zip(FastWeights._fields, weights, strict=True):
            _finite(f"state.{name}", w)
        if bool((lr < 0).any()):
            raise ValueError(
                "lr must be >= 0 (a negative lr turns the inner descent step into ascent)"
            )
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


def check_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: LaCTState | FastWeights,
    opts: LaCTOptions,
    *,
    schedule: Schedule,
    beta: Tensor | None,
    cu_seqlens: Tensor | Sequence[int] | None,
) -> CallPlan:
    """Validate one op call (see :func:`batchcraft.ops.lact.lact` for the arguments)."""
    if isinstance(state, LaCTState):
        weights = state.weights
    elif isinstance(state, FastWeights):
        weights = state
    else:
        raise TypeError(f"state must be a LaCTState or FastWeights, got {type(state).__name__}")
    if not isinstance(opts, LaCTOptions):
        raise TypeError(f"options must be a LaCTOptions, got {type(opts).__name__}")
    if opts.fast_weight == "linear":
        weights = FastWeights(None, None, weights.down)
    _check_inputs(q, k, v, lr, beta, weights, opts)
    T = q.shape[1]

    if isinstance(state, LaCTState):
        if state.weight_norm != opts.weight_norm:
            raise ValueError(
                f"state was initialised with weight_norm={state.weight_norm!r}, but "
                f"weight_norm={opts.weight_norm!r}"
            )
        if state.momentum is not None and beta is None:
            raise ValueError(
                "state carries a momentum buffer: pass beta (or start from a fresh state)"
            )
        if opts.fast_weight == "linear" and state.weights.gate is not None:
            raise ValueError("state holds SwiGLU weights but fast_weight='linear'")
        if beta is not None and state.num_pending > 0 and state.pending_beta is None:
            raise ValueError(
                "state holds pending tokens without momentum gates, so this call cannot pass "
                "beta: continue the stream without momentum or start from a fresh state"
            )
    if opts.use_momentum and beta is None:
        raise ValueError("use_momentum=True needs beta [B, T, H] (the momentum gates)")
    if beta is not None and not opts.use_momentum:
        raise ValueError("beta was given but use_momentum=False: pass use_momentum=True or no beta")

    ops: list[TTTOp] | None = None
    if isinstance(schedule, str):
        if schedule == "bidirectional":
            ops = [TTTOp("update", 0, T), TTTOp("apply", 0, T)]
        elif schedule != "causal":
            raise ValueError(
                f"schedule must be 'causal', 'bidirectional' or a list of TTTOp, got {schedule!r}"
            )
    else:
        ops = validate_schedule(schedule, T)
    pending = state.num_pending if isinstance(state, LaCTState) else 0
    consumed = state.num_tokens if isinstance(state, LaCTState) else 0
    if ops is not None and pending > 0:
        raise ValueError("only the causal schedule continues from a state with pending tokens")
    if ops is None:
        C = opts.chunk_size
        if C is None:
            raise ValueError("the causal schedule needs chunk_size (tokens per update), e.g. 2048")
        if consumed % C != pending:
            raise ValueError(
                f"state has consumed {consumed} tokens with {pending} pending, inconsistent with "
                f"chunk_size={C}; continue a stream with the chunk_size it was started with"
            )

    cu: list[int] | None = None
    if cu_seqlens is not None:
        if consumed != 0:
            raise ValueError(
                "cu_seqlens starts every document from the initial weights: pass a fresh state"
            )
        if ops is not None and not (isinstance(schedule, str) and schedule == "bidirectional"):
            raise ValueError(
                "cu_seqlens supports schedule='causal' or 'bidirectional', not an explicit op list"
            )
        cu = _cu_bounds(cu_seqlens, T, q.shape[0])
    return CallPlan(weights, ops, cu)
