"""``nn.LayerNorm`` / ``nn.RMSNorm``-compatible modules on :mod:`batchcraft.ops.norm`, and ``create_norm``.

Same constructor arguments and state-dict keys (``weight``, ``bias``) as torch, so
``LayerNorm(512).load_state_dict(torch.nn.LayerNorm(512).state_dict())`` works unchanged.

Example::

    norm = create_norm("rmsnorm", 512, eps=1e-6)
    y = norm(x)                         # x: [B, T, 512]
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.ops.norm import IMPLS, layer_norm, rms_norm

__all__ = ["LayerNorm", "RMSNorm", "create_norm"]


def _shape(normalized_shape: int | list[int] | tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) == 0 or any(not isinstance(s, int) or s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be a positive int or tuple of them, got {shape}")
    return shape


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


class LayerNorm(nn.Module):
    """Drop-in ``torch.nn.LayerNorm`` whose forward is :func:`batchcraft.ops.norm.layer_norm`.

    Args:
        normalized_shape: trailing shape normalised over.
        eps: added to the variance inside the square root.
        elementwise_affine: learn a gain ``weight`` (init 1) and, with ``bias``, a shift (init 0).
        bias: learn the shift.
        device, dtype: factory kwargs for the parameters.
        impl: ``"auto" | "naive" | "torch" | "triton"`` (keyword only).

    Shapes:
        x: ``[..., *normalized_shape]`` -> same shape and dtype.
    """

    def __init__(
        self,
        normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.impl = _check_impl(impl)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight: nn.Parameter | None = nn.Parameter(
                torch.empty(self.normalized_shape, **kw)
            )
            self.bias: nn.Parameter | None = (
                nn.Parameter(torch.empty(self.normalized_shape, **kw)) if bias else None
            )
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gain 1, shift 0."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(
            x, self.normalized_shape, self.weight, self.bias, self.eps, impl=self.impl
        )

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, impl={self.impl!r}"
        )


class RMSNorm(nn.Module):
    """Drop-in ``torch.nn.RMSNorm`` whose forward is :func:`batchcraft.ops.norm.rms_norm`.

    Args:
        normalized_shape: trailing shape normalised over.
        eps: ``None`` means ``torch.finfo(x.dtype).eps`` (as torch).
        elementwise_affine: learn a gain ``weight`` (init 1).
        device, dtype: factory kwargs.
        impl: ``"auto" | "naive" | "torch" | "triton"`` (keyword only).

    Shapes:
        x: ``[..., *normalized_shape]`` -> same shape and dtype.
    """

    def __init__(
        self,
        normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.impl = _check_impl(impl)
        if elementwise_affine:
            self.weight: nn.Parameter | None = nn.Parameter(
                torch.empty(self.normalized_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gain 1."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, impl={self.impl!r}"
        )


_NORMS: dict[str, type[nn.Module]] = {
    "layernorm": LayerNorm,
    "rmsnorm": RMSNorm,
}


def create_norm(norm: str | type | functools.partial, dim: int, **kwargs: Any) -> nn.Module:  # type: ignore[type-arg]
    """Build a norm layer over ``dim`` features from a name, a class or a partial.

    Args:
        norm: ``"layernorm"`` / ``"rmsnorm"`` (case and ``_``/``-`` insensitive, ``"ln"``/``"rms"``
            accepted), an ``nn.Module`` class taking ``(dim, **kwargs)``, or a ``functools.partial`` of one.
        dim: number of features (the normalised trailing dim).
        **kwargs: passed to the constructor (``eps``, ``elementwise_affine``, ``impl``...).

    Raises:
        ValueError: unknown name.
        TypeError: anything else than a name, class or partial.
    """
    if isinstance(norm, str):
        key = norm.lower().replace("_", "").replace("-", "")
        key = {"ln": "layernorm", "rms": "rmsnorm"}.get(key, key)
        if key not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {sorted(_NORMS)}")
        return _NORMS[key](dim, **kwargs)
    if isinstance(norm, functools.partial) or (
        isinstance(norm, type) and issubclass(norm, nn.Module)
    ):
        module = norm(dim, **kwargs)
        if not isinstance(module, nn.Module):
            raise TypeError(f"create_norm: {norm!r} did not build an nn.Module")
        return module
    raise TypeError(
        f"norm must be a name {sorted(_NORMS)}, an nn.Module class or a functools.partial, "
        f"got {type(norm).__name__}"
    )
