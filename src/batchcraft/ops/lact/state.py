"""Fast weights and the streaming state of the LaCT op.

Fast weights are stored **out x in** and applied as ``W @ x``:

* ``gate`` ``Wg``: [B, H, Dh, D] (paper W1, official w0)
* ``up``   ``Wu``: [B, H, Dh, D] (paper W3, official w2)
* ``down`` ``Wd``: [B, H, D, Dh] (paper W2, official w1); [B, H, D, D] for the linear variant,
  whose ``gate`` and ``up`` are ``None``.

:class:`LaCTState` carries everything a causal call needs to continue exactly where the previous
call stopped: committed weights, the pre-norm accumulator, the reference row norms, the momentum
buffer, the pending tokens of the unfinished chunk and the number of tokens consumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["NORM_EPS", "FastWeights", "LaCTState", "map_weights", "renorm", "row_norms"]

NORM_EPS = 1e-5  # renorm(X) = X / (||X||_row + NORM_EPS) * rho  (eps outside the sqrt)


class FastWeights(NamedTuple):
    """Per-head fast weights; ``gate``/``up`` are ``None`` for the linear variant."""

    gate: Tensor | None
    up: Tensor | None
    down: Tensor


def map_weights(fn: Callable[[Tensor], Tensor], w: FastWeights) -> FastWeights:
    """Apply ``fn`` to every present matrix of ``w``."""
    return FastWeights(
        None if w.gate is None else fn(w.gate),
        None if w.up is None else fn(w.up),
        fn(w.down),
    )


def row_norms(w: FastWeights) -> FastWeights:
    """Row norms over the INPUT dim (last axis): gate/up [..., Dh, 1], down [..., D, 1]."""
    return map_weights(lambda x: x.norm(dim=-1, keepdim=True), w)


def renorm(x: Tensor, rho: Tensor) -> Tensor:
    """``x / (||x||_row + 1e-5) * rho`` with the row norm over the last axis."""
    return x / (x.norm(dim=-1, keepdim=True) + NORM_EPS) * rho


def _opt(fn: Callable[[Tensor], Tensor], t: Tensor | None) -> Tensor | None:
    return None if t is None else fn(t)


def _opt_w(fn: Callable[[Tensor], Tensor], w: FastWeights | None) -> FastWeights | None:
    return None if w is None else map_weights(fn, w)


@dataclass
class LaCTState:
    """Streaming state of the causal LaCT op.

    Attributes:
        weights: committed fast weights used by ``apply`` (post-norm / no norm: the weights;
            pre-norm: ``renorm(accum)``, exactly ``W0`` before the first update).
        accum: pre-norm accumulator (starts at ``W0``); ``None`` otherwise.
        row_norms: reference row norms ``rho = ||W0||_row`` (kept in the graph); ``None`` when
            ``weight_norm`` is ``None``.
        momentum: heavy-ball buffer ``M`` (pre-Muon); ``None`` when momentum is off.
        pending_k: keys of the unfinished chunk [B, P, H, D] (0 <= P < C); ``None`` when P = 0.
        pending_v: values of the unfinished chunk [B, P, H, D].
        pending_lr: learning rates of the unfinished chunk [B, P, H, 3].
        pending_beta: momentum gates of the unfinished chunk [B, P, H] (or ``None``).
        num_tokens: tokens consumed so far (absolute position of the next token).
        weight_norm: ``"post"``, ``"pre"`` or ``None``; fixed at :meth:`init`.
    """

    weights: FastWeights
    accum: FastWeights | None = None
    row_norms: FastWeights | None = None
    momentum: FastWeights | None = None
    pending_k: Tensor | None = None
    pending_v: Tensor | None = None
    pending_lr: Tensor | None = None
    pending_beta: Tensor | None = None
    num_tokens: int = 0
    weight_norm: str | None = "post"

    @staticmethod
    def init(
        weights: FastWeights,
        weight_norm: str | None = "post",
        momentum: bool = False,
        *,
        batch_size: int | None = None,
    ) -> LaCTState:
        """A fresh state from initial weights ``W0`` ([B, H, ...], or [H, ...] with ``batch_size``).

        Per-head weights [H, ...] are expanded over the batch without a copy, so gradients flow
        back to the learned initial weights.
        """
        if weight_norm not in ("post", "pre", None):
            raise ValueError(f"weight_norm must be 'post', 'pre' or None, got {weight_norm!r}")
        if batch_size is not None and weights.down.dim() == 3:
            weights = map_weights(lambda x: x.unsqueeze(0).expand(batch_size, *x.shape), weights)
        rho = row_norms(weights) if weight_norm is not None else None
        accum = weights if weight_norm == "pre" else None
        mom = map_weights(torch.zeros_like, weights) if momentum else None
        return LaCTState(
            weights=weights,
            accum=accum,
            row_norms=rho,
            momentum=mom,
            weight_norm=weight_norm,
        )

    @property
    def num_pending(self) -> int:
        """P: tokens of the unfinished chunk held in the state."""
        return 0 if self.pending_k is None else int(self.pending_k.shape[1])

    @property
    def fast_weight(self) -> str:
        """``"swiglu"`` or ``"linear"``."""
        return "linear" if self.weights.gate is None else "swiglu"

    def _map(self, fn: Callable[[Tensor], Tensor]) -> LaCTState:
        return replace(
            self,
            weights=map_weights(fn, self.weights),
            accum=_opt_w(fn, self.accum),
            row_norms=_opt_w(fn, self.row_norms),
            momentum=_opt_w(fn, self.momentum),
            pending_k=_opt(fn, self.pending_k),
            pending_v=_opt(fn, self.pending_v),
            pending_lr=_opt(fn, self.pending_lr),
            pending_beta=_opt(fn, self.pending_beta),
        )

    def detach(self) -> LaCTState:
        """The same state cut from the graph (truncated BPTT between calls)."""
        return self._map(lambda t: t.detach())

    def clone(self) -> LaCTState:
        """A deep copy of every tensor (keeps the graph)."""
        return self._map(lambda t: t.clone())

    def to(self, *args: object, **kwargs: object) -> LaCTState:
        """Move/cast every tensor (``Tensor.to`` arguments)."""
        return self._map(lambda t: t.to(*args, **kwargs))  # type: ignore[call-overload]

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor view of the state (for comparisons and memory accounting)."""
        out: dict[str, Tensor] = {}
        for name in ("weights", "accum", "row_norms", "momentum"):
            w = getattr(self, name)
            if w is not None:
                for part, t in zip(FastWeights._fields, w, strict=True):
                    if t is not None:
                        out[f"{name}.{part}"] = t
        for name in ("pending_k", "pending_v", "pending_lr", "pending_beta"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        return out
