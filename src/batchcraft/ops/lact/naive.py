"""Reference LaCT: a per-range loop whose inner gradient is autograd of the loss (the definition).

Readable rather than fast: tensors stay in the op layout ``[B, T, H, D]``, every product is an
``einsum``, and ``Delta_m = -dL_m/dW_m`` comes from :func:`torch.func.grad` of

    L_m(W) = - sum_t lm[t] <f_W(k_t), v_t>            ("neg_dot")
    L_m(W) =   sum_t lm[t] ||f_W(k_t) - v_t||^2 / 2    ("mse")

so it checks the closed form of the fast path. Works in fp32 and fp64 and is differentiable
(gradients flow through the inner gradients to q, k, v, lr, beta and the initial weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.executor import Backend
from batchcraft.ops.lact.options import LaCTOptions, resolve_options
from batchcraft.ops.lact.runner import Layout, run_lact
from batchcraft.ops.lact.schedule import Schedule
from batchcraft.ops.lact.state import FastWeights, LaCTState

__all__ = ["naive_lact"]


def _f(w: Sequence[Tensor], x: Tensor) -> Tensor:
    """``f_W(x)``. x: [B, S, H, D]; weights [B, H, Dh, D] x2, [B, H, D, Dh] (or just down) -> [B, S, H, D]."""
    if len(w) == 1:
        return torch.einsum("bhij,bshj->bshi", w[0], x)
    gate, up, down = w
    zg = torch.einsum("bhij,bshj->bshi", gate, x)  # [B, S, H, Dh]
    zu = torch.einsum("bhij,bshj->bshi", up, x)
    return torch.einsum("bhij,bshj->bshi", down, torch.nn.functional.silu(zg) * zu)


class _NaiveBackend(Backend):
    def apply(self, w: Sequence[Tensor], q: Tensor) -> Tensor:
        return _f(w, q)

    def grad(self, w: Sequence[Tensor], k: Tensor, v: Tensor, lr: Tensor) -> list[Tensor]:
        # lr columns: (gate, up, down); the linear variant has only "down".
        cols = [0, 1, 2] if len(w) == 3 else [2]
        mse = self.cfg.inner_loss == "mse"
        deltas = []
        for i, col in enumerate(cols):
            lam = lr[..., col]  # [B, S, H]

            def loss(wi: Tensor, i: int = i, lam: Tensor = lam) -> Tensor:
                ws = list(w)
                ws[i] = wi
                f = _f(ws, k)
                if mse:
                    return (lam * 0.5 * (f - v).pow(2).sum(-1)).sum()
                return -(lam * (f * v).sum(-1)).sum()

            deltas.append(-torch.func.grad(loss)(w[i]))
        return deltas

    def mu(self, beta: Tensor) -> Tensor:
        return beta.mean(dim=1)[..., None, None]  # [B, S, H] -> [B, H, 1, 1]


def _make(cfg: LaCTOptions) -> tuple[Backend, Layout]:
    return _NaiveBackend(cfg), Layout()


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
    """Reference LaCT (autograd inner gradient, per-range loop). Same contract as
    :func:`batchcraft.ops.lact.lact`; ``recompute`` is ignored."""
    opts = resolve_options(options, kw, beta_given=beta is not None)
    return run_lact(
        _make, q, k, v, lr, state, opts, schedule=schedule, beta=beta, cu_seqlens=cu_seqlens
    )
