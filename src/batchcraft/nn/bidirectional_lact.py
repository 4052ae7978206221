"""Bidirectional LaCT layer for sets: update on all input tokens, then apply.

Used for novel view synthesis: the input views write the fast weights once
(:meth:`BidirectionalLaCTLayer.reconstruct`), then any number of query tokens read them
(:meth:`BidirectionalLaCTLayer.render`, cost independent of the number of input views).
``update=False`` is the updates-off ablation: the same parameters, every token reads ``W0``
(a static SwiGLU branch), so whatever the model gains from its inputs through this layer is gone.
:meth:`BidirectionalLaCTLayer.drift` measures how far the update moved the fast weights.
Shapes: ``x: [B, T, d]``; ``H = d / head_dim`` heads of ``D = head_dim``; ``Dh = inter_multi * D``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn.lact import inv_softplus, l2_normalize
from batchcraft.ops.lact import FastWeights, LaCTOptions, TTTOp, lact

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["BidirectionalLaCTLayer"]


class BidirectionalLaCTLayer(nn.Module):
    """Set layer: ``y = o_proj(norm(f_W'(q)))`` with ``W' = W0 + one update over the inputs``.

    Example::

        layer = BidirectionalLaCTLayer(64, head_dim=32)
        y, w = layer(x)                     # x: [B, T, 64], all tokens update then all apply
        w = layer.reconstruct(x_views)      # FastWeights from the input tokens only
        y = layer.render(w, x_targets)      # [B, Tq, 64]
        layer.drift(w)                      # [B, 3]: ||W - W0|| / ||W0|| (gate, up, down)
        w0 = layer.reconstruct(x_views, update=False)   # updates off: W0 for every scene
    """

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        *,
        inter_multi: int = 1,
        base_lr: float = 1e-2,
        o_norm: bool = True,
        options: LaCTOptions | None = None,
        cp_group: ProcessGroup | None = None,
        **op_kw: Any,
    ) -> None:
        """Build the layer.

        Args:
            hidden_size: d.
            head_dim: D (``H = d / D`` heads).
            inter_multi: fast hidden width ``Dh = inter_multi * D``.
            base_lr: inner lr at init (softplus around it).
            o_norm: per-head RMSNorm on the output.
            options: the op options (default: classic Muon, 5 steps, post-norm, no momentum).
            cp_group: a ``torch.distributed`` process group for chunk parallelism (also settable
                as ``layer.cp_group``): each rank passes a slice of the set's tokens (any size);
                the update sums the inner gradients of every rank's tokens (one all-reduce), so
                every rank gets the same fast weights; ``num_update`` counts this rank's tokens.
            **op_kw: :class:`LaCTOptions` fields applied on top (``use_muon``, ``muon``,
                ``muon_steps``, ``weight_norm``, ``lact_impl``, ...).
        """
        super().__init__()
        if head_dim < 1 or hidden_size % head_dim:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by head_dim ({head_dim})"
            )
        if not math.isfinite(base_lr) or base_lr <= 0:
            raise ValueError(f"base_lr ({base_lr}) must be a finite number > 0")
        if inter_multi < 1:
            raise ValueError(f"inter_multi ({inter_multi}) must be >= 1")
        base = options if options is not None else LaCTOptions(use_muon=True, muon="classic")
        opts = LaCTOptions.build(LaCTOptions.project(base), **op_kw)
        if opts.use_momentum or opts.fast_weight != "swiglu":
            raise ValueError(
                "BidirectionalLaCTLayer runs one update without momentum on SwiGLU fast weights: "
                "use_momentum must be False and fast_weight 'swiglu'"
            )
        self.lact_options = opts
        self.cp_group = cp_group
        d, h = hidden_size, hidden_size // head_dim
        self.hidden_size, self.num_heads, self.head_dim = d, h, head_dim
        self.hidden_dim = inter_multi * head_dim
        self.base_lr = base_lr
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.lr_proj = nn.Linear(d, 3 * h, bias=True)
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-5) if o_norm else None
        self.o_proj = nn.Linear(d, d, bias=False)
        dh = self.hidden_dim
        self.w_gate = nn.Parameter(torch.empty(h, dh, head_dim))
        self.w_up = nn.Parameter(torch.empty(h, dh, head_dim))
        self.w_down = nn.Parameter(torch.empty(h, head_dim, dh))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear N(0, 0.02²), biases 0; fast weights ``init="nvs"`` (variance doubled)."""
        for m in (self.qkv, self.lr_proj, self.o_proj):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        g = math.sqrt(2.0)
        with torch.no_grad():
            self.w_gate.normal_(0.0, g / math.sqrt(self.head_dim))
            self.w_up.normal_(0.0, g / math.sqrt(self.head_dim))
            self.w_down.normal_(0.0, g / math.sqrt(self.hidden_dim))
        if self.o_norm is not None:
            nn.init.ones_(self.o_norm.weight)

    def initial_weights(self) -> FastWeights:
        """``W0``: gate/up ``[H, Dh, D]``, down ``[H, D, Dh]``."""
        return FastWeights(self.w_gate, self.w_up, self.w_down)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        h, dd = self.num_heads, self.head_dim
        q, k, v = F.silu(self.qkv(x)).reshape(b, t, 3, h, dd).unbind(2)  # [B, T, H, D] each
        q, k = l2_normalize(q), l2_normalize(k)
        cdt = torch.promote_types(x.dtype, torch.float32)
        lr = F.softplus(self.lr_proj(x).to(cdt) + inv_softplus(self.base_lr)).reshape(b, t, h, 3)
        return q, k, v, lr

    def _run(
        self, x: Tensor, ops: list[TTTOp], state: FastWeights | None
    ) -> tuple[Tensor, FastWeights]:
        q, k, v, lr = self._project(x)
        o, st = lact(
            q, k, v, lr, self.initial_weights() if state is None else state, self.lact_options,
            schedule=ops, group=self.cp_group,
        )  # fmt: skip
        return o, st.weights

    def _out(self, o: Tensor) -> Tensor:
        if self.o_norm is not None:
            o = self.o_norm(o)
        return self.o_proj(o.flatten(2))  # [B, T, H, D] -> [B, T, d] -> [B, T, d]

    def forward(
        self, x: Tensor, *, num_update: int | None = None, update: bool = True
    ) -> tuple[Tensor, FastWeights]:
        """Update on the first ``num_update`` tokens (default all), then apply to every token.

        Args:
            x: ``[B, T, d]``.
            num_update: tokens (from the start) that write the fast weights.
            update: ``False`` skips the update (updates-off ablation): every token reads ``W0``.

        Returns:
            ``(y [B, T, d], updated fast weights [B, H, ...])`` (``W0`` when ``update=False``).
        """
        self._check(x)
        t = x.shape[1]
        n = t if num_update is None else num_update
        if not 0 < n <= t:
            raise ValueError(f"num_update ({n}) must be in [1, T = {t}]")
        if not update:
            w0 = self.static_weights(x.shape[0])
            return self.render(w0, x), w0
        o, w = self._run(x, [TTTOp("update", 0, n), TTTOp("apply", 0, t)], None)
        return self._out(o), w

    def reconstruct(self, x_in: Tensor, *, update: bool = True) -> FastWeights:
        """One update over all input tokens ``x_in [B, T, d]``; returns the fast weights.

        With ``update=False`` (updates-off ablation) returns ``W0`` expanded over the batch.
        """
        self._check(x_in)
        if not update:
            return self.static_weights(x_in.shape[0])
        _, w = self._run(x_in, [TTTOp("update", 0, x_in.shape[1])], None)
        return w

    def render(self, weights: FastWeights, x_query: Tensor) -> Tensor:
        """Apply ``weights`` to query tokens ``x_query [B, Tq, d]``; returns ``[B, Tq, d]``."""
        self._check(x_query)
        o, _ = self._run(x_query, [TTTOp("apply", 0, x_query.shape[1])], weights)
        return self._out(o)

    def static_weights(self, batch: int) -> FastWeights:
        """``W0`` expanded (no copy) to ``[batch, H, ...]``: the fast weights with updates off."""
        w0 = (self.w_gate, self.w_up, self.w_down)
        return FastWeights(*(w.expand(batch, *w.shape) for w in w0))

    def drift(self, weights: FastWeights) -> Tensor:
        """Relative change of each fast-weight matrix from ``W0``: ``[B, 3]`` (gate, up, down).

        ``||W - W0||_F / ||W0||_F`` per head, averaged over heads; 0 when nothing was updated.
        """
        out = []
        for w, w0 in zip(weights, (self.w_gate, self.w_up, self.w_down), strict=True):
            if w is None:
                raise ValueError("drift needs all three SwiGLU fast weights, got None")
            num = (w - w0).flatten(-2).norm(dim=-1)  # [B, H]
            out.append((num / w0.flatten(-2).norm(dim=-1)).mean(-1))
        return torch.stack(out, dim=-1)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size or x.shape[1] < 1:
            raise ValueError(f"x must be [B, T >= 1, {self.hidden_size}], got {tuple(x.shape)}")
