"""``LayerNormLSTM`` / ``LayerNormGRU``: drop-in ``torch.nn.LSTM`` / ``torch.nn.GRU`` with the paper's LN.

Same constructor arguments, forward signature and return structure as torch (``batch_first``,
multi-layer, bidirectional, inter-layer dropout, ``(h0, c0)``, unbatched and ``PackedSequence``
inputs), the same parameter names (``weight_ih_l{k}[_reverse]``...), plus LayerNorm parameters
(``ln_ih_weight_l{k}``...). ``layer_norm=False`` computes exactly what torch computes, and
``load_state_dict(torch_lstm.state_dict(), strict=False)`` copies every shared weight.

Example::

    rnn = LayerNormLSTM(32, 64, num_layers=2, batch_first=True, bidirectional=True)
    out, (h_n, c_n) = rnn(x)               # x: [B, T, 32] -> out: [B, T, 128]; h_n: [4, B, 64]
    out, (h_n, c_n) = rnn(x, lengths=lens)  # padded batch with per-row lengths
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from batchcraft.ops.recurrent import IMPLS, GRUParams, LSTMParams, ln_gru, ln_lstm
from batchcraft.ops.recurrent.params import check_variant

__all__ = ["LayerNormGRU", "LayerNormLSTM"]

# LN parameter groups per mode: (name, size in units of H)
_LN_GROUPS = {
    "LSTM": (("ln_ih", 4), ("ln_hh", 4), ("ln_c", 1)),
    "GRU": (("ln_ih_rz", 2), ("ln_ih_n", 1), ("ln_hh_rz", 2), ("ln_hh_n", 1)),
}


class _LayerNormRNNBase(nn.Module):
    mode = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        layer_norm: bool = True,
        ln_eps: float = 1e-5,
        variant: str = "paper",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        if isinstance(dropout, bool) or not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout}")
        if dropout > 0 and num_layers == 1:  # same warning, same category as torch.nn.LSTM
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                UserWarning,
                stacklevel=2,
            )
        if proj_size != 0:
            raise NotImplementedError("proj_size != 0 (LSTMP) is not supported; use proj_size=0")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, 0
        self.layer_norm, self.ln_eps = layer_norm, ln_eps
        self.variant, self.impl = check_variant(variant), impl
        gates = 4 if self.mode == "LSTM" else 3
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        dirs = 2 if bidirectional else 1
        # torch's bookkeeping of the recurrent weights (LN parameters are not part of it)
        self._all_weights: list[list[str]] = []
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size * dirs
            for sfx in self._suffixes():
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
                self._all_weights.append([f"{n}_l{k}{sfx}" for n in names])
                self._param(f"weight_ih_l{k}{sfx}", (gates * hidden_size, in_k), kw)
                self._param(f"weight_hh_l{k}{sfx}", (gates * hidden_size, hidden_size), kw)
                if bias:
                    self._param(f"bias_ih_l{k}{sfx}", (gates * hidden_size,), kw)
                    self._param(f"bias_hh_l{k}{sfx}", (gates * hidden_size,), kw)
                if layer_norm:
                    for ln, units in _LN_GROUPS[self.mode]:
                        self._param(f"{ln}_weight_l{k}{sfx}", (units * hidden_size,), kw)
                        self._param(f"{ln}_bias_l{k}{sfx}", (units * hidden_size,), kw)
        self.reset_parameters()

    @property
    def _flat_weights_names(self) -> list[str]:
        return [n for names in self._all_weights for n in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The recurrent weights in torch's flat order (``weight_ih_l0``, ``weight_hh_l0``, ...)."""
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction ``[weight_ih, weight_hh, bias_ih, bias_hh]``, as ``nn.LSTM``.

        Only torch's parameters: the LayerNorm gains and shifts (``ln_*``) are not listed, so code
        written for ``nn.LSTM`` (e.g. an orthogonal init over ``all_weights``) keeps working.
        """
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, for ``nn.LSTM`` compatibility (there is no cuDNN weight buffer to compact)."""

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _param(self, name: str, shape: tuple[int, ...], kw: dict[str, Any]) -> None:
        self.register_parameter(name, nn.Parameter(torch.empty(shape, **kw)))

    def reset_parameters(self) -> None:
        """``W``, ``b`` ~ U(-1/sqrt(H), 1/sqrt(H)) as torch; LN gains 1, LN shifts 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("ln_"):
                nn.init.ones_(p) if "_weight_" in name else nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -bound, bound)

    def _layer_params(self, k: int, sfx: str) -> LSTMParams | GRUParams:
        def get(name: str) -> Tensor | None:
            return getattr(self, f"{name}_l{k}{sfx}", None)

        base = {n: get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        ln = {
            f"{g}_{w}": get(f"{g}_{w}")
            for g, _ in _LN_GROUPS[self.mode]
            for w in ("weight", "bias")
        }
        cls = LSTMParams if self.mode == "LSTM" else GRUParams
        return cls(**base, **ln)  # type: ignore[arg-type]

    def _run_direction(
        self, x: Tensor, state: tuple[Tensor, ...], k: int, d: int, lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        p = self._layer_params(k, self._suffixes()[d])
        kw: dict[str, Any] = {
            "layer_norm": self.layer_norm, "eps": self.ln_eps, "variant": self.variant,
            "lengths": lengths, "reverse": d == 1, "impl": self.impl,
        }  # fmt: skip
        if self.mode == "LSTM":
            out, (h, c) = ln_lstm(x, (state[0], state[1]), p, **kw)  # type: ignore[arg-type]
            return out, (h, c)
        out, h = ln_gru(x, state[0], p, **kw)  # type: ignore[arg-type]
        return out, (h,)

    def _check_lengths(self, lengths: Any, t: int, b: int) -> Tensor:
        lens = torch.as_tensor(lengths, dtype=torch.int64).flatten().cpu()
        if lens.numel() != b or (lens.numel() > 0 and (lens.min() < 1 or lens.max() > t)):
            raise ValueError(f"lengths must hold {b} values in [1, T={t}], got {lens.tolist()}")
        return lens

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | list[int] | None = None,
    ) -> tuple[Tensor | PackedSequence, Any]:
        """Run the stack over a sequence.

        Args:
            input: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), unbatched ``[T, I]``, or a
                ``PackedSequence``.
            hx: ``h0`` (GRU) or ``(h0, c0)`` (LSTM), each ``[L*D, B, H]`` (``[L*D, H]`` unbatched);
                zeros when ``None``.
            lengths: ``[B]`` valid steps per row of a padded batch (not with a ``PackedSequence``).

        Returns:
            ``(output, h_n)`` (GRU) or ``(output, (h_n, c_n))`` (LSTM) as torch: output
            ``[T, B, D*H]`` (or packed like the input), states ``[L*D, B, H]``.
        """
        packed = isinstance(input, PackedSequence)
        lens: Tensor | None
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("pass either a PackedSequence or lengths, not both")
            x, lens = pad_packed_sequence(input)  # [T, B, I], original batch order
            unbatched = False
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input)}")
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"input must be 3-D (batched) or 2-D (unbatched), got {input.dim()}-D"
                )
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)  # [B, T, I] -> [T, B, I]
            lens = None if lengths is None else self._check_lengths(lengths, x.shape[0], x.shape[1])
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input has {x.shape[-1]} features, expected input_size={self.input_size}"
            )
        if x.shape[0] == 0:  # torch.nn.LSTM raises too; an empty batch (B = 0) is fine
            raise ValueError("input has no time steps (T = 0); sequences need at least one step")
        w_dtype = self.weight_ih_l0.dtype
        if x.dtype != w_dtype:  # torch's wording
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({w_dtype}). Convert "
                f"input: input.to({w_dtype}), or convert model: model.to({x.dtype})"
            )
        states = self._initial_states(hx, x, unbatched)
        dirs = len(self._suffixes())
        h_out: list[list[Tensor]] = [[] for _ in states]
        layer_in = x
        for k in range(self.num_layers):
            outs = []
            for d in range(dirs):
                idx = k * dirs + d
                out, st = self._run_direction(layer_in, tuple(s[idx] for s in states), k, d, lens)
                outs.append(out)
                for lst, s in zip(h_out, st, strict=True):
                    lst.append(s)
            layer_in = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]  # [T, B, D*H]
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        final = tuple(torch.stack(lst) for lst in h_out)  # each [L*D, B, H]
        output: Tensor | PackedSequence = layer_in
        if packed:
            assert isinstance(input, PackedSequence) and lens is not None  # for mypy
            output = self._repack(layer_in, lens, input)
        elif unbatched:
            output = layer_in.squeeze(1)
            final = tuple(s.squeeze(1) for s in final)
        elif self.batch_first:
            output = layer_in.transpose(0, 1)
        if self.mode == "LSTM":
            return output, (final[0], final[1])
        return output, final[0]

    @staticmethod
    def _repack(out: Tensor, lens: Tensor, like: PackedSequence) -> PackedSequence:
        """Pack ``out [T, B, F]`` (original order) with the batch layout of the input ``like``."""
        if like.sorted_indices is not None:
            out = out.index_select(1, like.sorted_indices.to(out.device))
            lens = lens.index_select(0, like.sorted_indices.cpu())
        data = pack_padded_sequence(out, lens, enforce_sorted=True).data
        return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)

    def _initial_states(
        self, hx: Tensor | tuple[Tensor, Tensor] | None, x: Tensor, unbatched: bool
    ) -> tuple[Tensor, ...]:
        n = self.num_layers * len(self._suffixes())
        shape = (n, x.shape[1], self.hidden_size)
        count = 2 if self.mode == "LSTM" else 1
        if hx is None:
            return tuple(x.new_zeros(shape) for _ in range(count))
        given: tuple[Tensor, ...]
        if self.mode == "LSTM":
            if not isinstance(hx, tuple | list) or len(hx) != 2:
                raise TypeError("LSTM hx must be a tuple (h0, c0)")
            given = (hx[0], hx[1])
        else:
            if not isinstance(hx, Tensor):
                raise TypeError("GRU hx must be a Tensor h0")
            given = (hx,)
        want = (n, self.hidden_size) if unbatched else shape
        out = []
        for s in given:
            if tuple(s.shape) != want:
                raise ValueError(
                    f"hidden state must have shape {want} [L*D, B, H], got {tuple(s.shape)}"
                )
            if s.dtype != x.dtype:
                raise ValueError(
                    f"hidden state dtype ({s.dtype}) does not match input dtype ({x.dtype}); "
                    f"convert it with .to({x.dtype})"
                )
            out.append(s.unsqueeze(1) if unbatched else s)
        return tuple(out)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", layer_norm={self.layer_norm}, variant={self.variant!r}, impl={self.impl!r}"


class LayerNormLSTM(_LayerNormRNNBase):
    """Layer-normalised LSTM, drop-in for ``torch.nn.LSTM`` (paper supplement eqs. 20-22).

    Extra keyword-only args: ``layer_norm`` (False: exactly ``nn.LSTM``), ``ln_eps``,
    ``variant`` (``"paper"`` | ``"per_gate"``),
    ``impl`` (``"auto"|"naive"|"hoisted"|"fused"|"compile"``; auto = fused BPTT).
    Forward returns ``(output, (h_n, c_n))``.
    """

    mode = "LSTM"


class LayerNormGRU(_LayerNormRNNBase):
    """Layer-normalised GRU (official four-LN form), drop-in for ``torch.nn.GRU``.

    Same extra keyword-only args as :class:`LayerNormLSTM`; ``proj_size`` must stay 0.
    Forward returns ``(output, h_n)``.
    """

    mode = "GRU"
