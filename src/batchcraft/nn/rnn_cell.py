"""``LayerNormLSTMCell`` / ``LayerNormGRUCell``: drop-in ``torch.nn.LSTMCell`` / ``GRUCell`` with the paper's LN.

One step of :func:`batchcraft.ops.recurrent.ln_lstm` / ``ln_gru``. Parameter names match torch's
cells (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) plus ``ln_*_weight`` / ``ln_*_bias``.

Example::

    cell = LayerNormLSTMCell(16, 32)
    h, c = cell(x_t, (h, c))            # x_t: [B, 16] -> h, c: [B, 32]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.ops.recurrent import GRUParams, LSTMParams, ln_gru, ln_lstm
from batchcraft.ops.recurrent.params import check_variant

__all__ = ["LayerNormGRUCell", "LayerNormLSTMCell"]


class _LayerNormCellBase(nn.Module):
    gates = 4
    ln_groups: tuple[tuple[str, int], ...] = ()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = True,
        ln_eps: float = 1e-5,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.layer_norm, self.ln_eps, self.variant = layer_norm, ln_eps, check_variant(variant)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size, **kw))
        if bias:
            self.bias_ih: nn.Parameter | None = nn.Parameter(torch.empty(g, **kw))
            self.bias_hh: nn.Parameter | None = nn.Parameter(torch.empty(g, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if layer_norm:
            for ln, units in self.ln_groups:
                for w in ("weight", "bias"):
                    p = nn.Parameter(torch.empty(units * hidden_size, **kw))
                    self.register_parameter(f"{ln}_{w}", p)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``W``, ``b`` ~ U(-1/sqrt(H), 1/sqrt(H)) as torch; LN gains 1, shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.ones_(p) if name.endswith("_weight") else nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -bound, bound)

    def _kwargs(self) -> dict[str, Any]:
        ln_names = [f"{ln}_{w}" for ln, _ in self.ln_groups for w in ("weight", "bias")]
        names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", *ln_names]
        return {n: getattr(self, n, None) for n in names}

    def _input(self, x: Tensor) -> tuple[Tensor, bool]:
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"input must be [B, {self.input_size}] or [{self.input_size}], got {tuple(x.shape)}"
            )
        return (x.unsqueeze(0), True) if x.dim() == 1 else (x, False)

    def _state(self, s: Tensor | None, x: Tensor, unbatched: bool) -> Tensor:
        if s is None:
            return x.new_zeros(x.shape[0], self.hidden_size)
        s = s.unsqueeze(0) if unbatched and s.dim() == 1 else s
        if tuple(s.shape) != (x.shape[0], self.hidden_size):
            raise ValueError(
                f"state must be [B, H] = [{x.shape[0]}, {self.hidden_size}], got {tuple(s.shape)}"
            )
        return s

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias}, "
            f"layer_norm={self.layer_norm}, variant={self.variant!r}"
        )


class LayerNormLSTMCell(_LayerNormCellBase):
    """One LN-LSTM step; ``layer_norm=False`` is exactly ``torch.nn.LSTMCell``.

    Shapes:
        x: ``[B, I]`` (or ``[I]``); hx: ``(h, c)`` each ``[B, H]`` or ``None`` -> ``(h', c')`` ``[B, H]``.
    """

    gates = 4
    ln_groups = (("ln_ih", 4), ("ln_hh", 4), ("ln_c", 1))

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x2, unb = self._input(x)
        h0 = self._state(None if hx is None else hx[0], x2, unb)
        c0 = self._state(None if hx is None else hx[1], x2, unb)
        p = LSTMParams(**self._kwargs())
        _, (h, c) = ln_lstm(
            x2.unsqueeze(0), (h0, c0), p, layer_norm=self.layer_norm, eps=self.ln_eps,
            variant=self.variant, impl="hoisted",
        )  # fmt: skip
        return (h.squeeze(0), c.squeeze(0)) if unb else (h, c)


class LayerNormGRUCell(_LayerNormCellBase):
    """One LN-GRU step (four LNs); ``layer_norm=False`` is exactly ``torch.nn.GRUCell``.

    Shapes:
        x: ``[B, I]`` (or ``[I]``); hx: ``[B, H]`` or ``None`` -> ``h'`` ``[B, H]``.
    """

    gates = 3
    ln_groups = (("ln_ih_rz", 2), ("ln_ih_n", 1), ("ln_hh_rz", 2), ("ln_hh_n", 1))

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        x2, unb = self._input(x)
        h0 = self._state(hx, x2, unb)
        p = GRUParams(**self._kwargs())
        _, h = ln_gru(
            x2.unsqueeze(0), h0, p, layer_norm=self.layer_norm, eps=self.ln_eps,
            variant=self.variant, impl="hoisted",
        )  # fmt: skip
        return h.squeeze(0) if unb else h
