"""The fast-weight network and its closed-form inner gradient (maths: docs/lact_op.md).

Two layouts:

* public functions take the op layout ``x: [B, T, H, D]`` and weights ``[B, H, ...]``;
* the ``*_rows`` helpers take the fast-path layout with heads folded into the batch,
  ``x: [N, S, D]`` (N = B*H) and weights ``[N, ...]``, so every product is one ``bmm``.

The inner loss of one update range with rows ``K, V`` and lr columns ``(lg, lu, ld)``:
``L_m(W) = - sum_t lm[t] * <f_W(k_t), v_t>`` (``"neg_dot"``, linear in v) or
``L_m(W) = sum_t lm[t] * ||f_W(k_t) - v_t||^2 / 2`` (``"mse"``). With the error signal
``E = v`` (neg_dot) or ``E = v - f_W(k)`` (mse), ``Delta_m = -dL_m/dW_m`` is::

    Zg = K Wg^T ; Zu = K Wu^T ; A = silu(Zg) ; Hk = A * Zu ; G = E Wd      # [S, Dh]
    Delta_d = E^T (ld * Hk)                                               # [D, Dh]
    Delta_u = (lu * G * A)^T K                                            # [Dh, D]
    Delta_g = (lg * G * Zu * silu'(Zg))^T K                               # [Dh, D]
    linear:   Delta_d = E^T (ld * K)                                      # [D, D]
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchcraft.ops.lact.options import INNER_LOSSES
from batchcraft.ops.lact.state import FastWeights

__all__ = [
    "INNER_LOSSES",
    "apply_rows",
    "inner_grad_rows",
    "lact_inner_grad",
    "silu_grad",
    "swiglu_apply",
]


def silu_grad(z: Tensor) -> Tensor:
    """``d silu(z) / dz = sigma(z) * (1 + z * (1 - sigma(z)))``."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def apply_rows(w: FastWeights, x: Tensor) -> Tensor:
    """``f_W(x)`` row-wise. x: [N, S, D], weights [N, ...] -> [N, S, D]."""
    if w.gate is None or w.up is None:
        return x @ w.down.mT
    h = torch.nn.functional.silu(x @ w.gate.mT) * (x @ w.up.mT)  # [N, S, Dh]
    return h @ w.down.mT


def inner_grad_rows(
    w: FastWeights,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    *,
    loss: str = "neg_dot",
) -> FastWeights:
    """Closed-form ``Delta = -grad L`` for one update range.

    Args:
        w: weights used by the update, [N, Dh, D] / [N, D, Dh] (linear: down [N, D, D]).
        k: keys [N, S, D].
        v: values [N, S, D].
        lr: learning rates [N, S, 3], columns (gate, up, down).
        loss: ``"neg_dot"`` or ``"mse"``.

    Returns:
        ``FastWeights`` of updates shaped like ``w``.
    """
    lg, lu, ld = lr[..., 0:1], lr[..., 1:2], lr[..., 2:3]  # [N, S, 1] each
    if w.gate is None or w.up is None:
        e = v - k @ w.down.mT if loss == "mse" else v
        return FastWeights(None, None, e.mT @ (ld * k))
    zg = k @ w.gate.mT  # [N, S, Dh]
    zu = k @ w.up.mT  # [N, S, Dh]
    sg = torch.sigmoid(zg)
    a = zg * sg  # silu(zg)
    hk = a * zu  # [N, S, Dh]
    e = v - hk @ w.down.mT if loss == "mse" else v  # [N, S, D]
    g = e @ w.down  # [N, S, Dh]
    d_down = e.mT @ (ld * hk)  # [N, D, Dh]
    d_up = (lu * g * a).mT @ k  # [N, Dh, D]
    d_gate = (lg * g * zu * sg * (1 + zg * (1 - sg))).mT @ k  # [N, Dh, D]
    return FastWeights(d_gate, d_up, d_down)


def _fold(x: Tensor) -> Tensor:
    """[B, T, H, X] -> [B*H, T, X] (contiguous)."""
    B, T, H, X = x.shape
    return x.permute(0, 2, 1, 3).reshape(B * H, T, X)


def _fold_w(w: FastWeights) -> FastWeights:
    """[B, H, a, b] -> [B*H, a, b]."""
    return FastWeights(
        None if w.gate is None else w.gate.flatten(0, 1),
        None if w.up is None else w.up.flatten(0, 1),
        w.down.flatten(0, 1),
    )


def swiglu_apply(weights: FastWeights, x: Tensor) -> Tensor:
    """Evaluate the fast-weight network per head.

    Args:
        weights: gate/up [B, H, Dh, D], down [B, H, D, Dh] (linear: gate = up = None, down [B, H, D, D]).
        x: [B, T, H, D].

    Returns:
        ``f_W(x)``: [B, T, H, D].
    """
    B, T, H, D = x.shape
    y = apply_rows(_fold_w(weights), _fold(x))  # [B*H, T, D]
    return y.view(B, H, T, D).permute(0, 2, 1, 3)


def lact_inner_grad(
    weights: FastWeights,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    fast_weight: str = "swiglu",
    *,
    loss: str = "neg_dot",
) -> FastWeights:
    """Closed-form update ``Delta_m = -dL_m/dW_m`` of one range of tokens.

    Args:
        weights: gate/up [B, H, Dh, D], down [B, H, D, Dh] (linear: down [B, H, D, D]).
        k: [B, S, H, D].
        v: [B, S, H, D].
        lr: [B, S, H, 3] columns (gate, up, down); the linear variant uses the down column.
        fast_weight: ``"swiglu"`` or ``"linear"``.
        loss: ``"neg_dot"`` (paper) or ``"mse"``.

    Returns:
        ``FastWeights`` of updates, shaped like ``weights``.
    """
    if fast_weight not in ("swiglu", "linear"):
        raise ValueError(f"fast_weight must be 'swiglu' or 'linear', got {fast_weight!r}")
    if loss not in INNER_LOSSES:
        raise ValueError(f"loss must be one of {INNER_LOSSES}, got {loss!r}")
    if fast_weight == "linear":
        weights = FastWeights(None, None, weights.down)
    B, _, H, _ = k.shape
    d = inner_grad_rows(_fold_w(weights), _fold(k), _fold(v), _fold(lr.to(k.dtype)), loss=loss)
    return FastWeights(
        None if d.gate is None else d.gate.unflatten(0, (B, H)),
        None if d.up is None else d.up.unflatten(0, (B, H)),
        d.down.unflatten(0, (B, H)),
    )
