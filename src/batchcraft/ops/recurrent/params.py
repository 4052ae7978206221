"""Parameter bundles for the layer-normalised LSTM / GRU ops (one layer, one direction).

Weights follow ``torch.nn.LSTM`` / ``torch.nn.GRU`` (gate order ``(i, f, g, o)`` and ``(r, z, n)``);
the LN gains/shifts are ``None`` when ``layer_norm=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

__all__ = ["VARIANTS", "GRUParams", "LSTMParams", "check_variant"]

VARIANTS = ("paper", "per_gate")


def check_variant(variant: str) -> str:
    """Validate the LN variant name.

    ``"paper"``: one LN over all gates of each path and the raw cell carried (LSTM, supplement
    eqs. 20-22). ``"per_gate"``: each gate's H slice normalised separately and (LSTM) the
    normalised cell carried, as TF1 ``LayerNormBasicLSTMCell`` / Keras do.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


@dataclass
class LSTMParams:
    """One LSTM layer/direction.

    Attributes:
        weight_ih: ``[4H, I]``.
        weight_hh: ``[4H, H]``.
        bias_ih, bias_hh: ``[4H]`` or ``None``.
        ln_ih_weight, ln_ih_bias: ``[4H]`` LN of the input path ``W_ih x``.
        ln_hh_weight, ln_hh_bias: ``[4H]`` LN of the recurrent path ``W_hh h``.
        ln_c_weight, ln_c_bias: ``[H]`` LN of the cell inside the output tanh.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    ln_ih_weight: Tensor | None = None
    ln_ih_bias: Tensor | None = None
    ln_hh_weight: Tensor | None = None
    ln_hh_bias: Tensor | None = None
    ln_c_weight: Tensor | None = None
    ln_c_bias: Tensor | None = None

    @property
    def hidden_size(self) -> int:
        return self.weight_hh.shape[1]

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    def tensors(self) -> list[Tensor]:
        """The non-``None`` tensors, in field order (for gradient checks)."""
        return [t for f in fields(self) if (t := getattr(self, f.name)) is not None]


@dataclass
class GRUParams:
    """One GRU layer/direction (the official four-LN form).

    Attributes:
        weight_ih: ``[3H, I]``.
        weight_hh: ``[3H, H]``.
        bias_ih, bias_hh: ``[3H]`` or ``None``.
        ln_ih_rz_weight, ln_ih_rz_bias: ``[2H]`` LN of ``W_i{r,z} x``.
        ln_ih_n_weight, ln_ih_n_bias: ``[H]`` LN of ``W_in x``.
        ln_hh_rz_weight, ln_hh_rz_bias: ``[2H]`` LN of ``W_h{r,z} h``.
        ln_hh_n_weight, ln_hh_n_bias: ``[H]`` LN of ``W_hn h``.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    ln_ih_rz_weight: Tensor | None = None
    ln_ih_rz_bias: Tensor | None = None
    ln_ih_n_weight: Tensor | None = None
    ln_ih_n_bias: Tensor | None = None
    ln_hh_rz_weight: Tensor | None = None
    ln_hh_rz_bias: Tensor | None = None
    ln_hh_n_weight: Tensor | None = None
    ln_hh_n_bias: Tensor | None = None

    @property
    def hidden_size(self) -> int:
        return self.weight_hh.shape[1]

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    def tensors(self) -> list[Tensor]:
        """The non-``None`` tensors, in field order (for gradient checks)."""
        return [t for f in fields(self) if (t := getattr(self, f.name)) is not None]
