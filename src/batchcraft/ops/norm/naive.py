"""Reference LayerNorm / RMSNorm written from the formula (docs/layernorm.md).

Statistics are computed in fp32 (fp64 when the input is fp64); the output keeps the input dtype.
These are the ground truth every fast path is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_norm_args", "naive_layer_norm", "naive_rms_norm", "stat_dtype"]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: fp64 for fp64 inputs, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_norm_args(
    x: Tensor,
    normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
    weight: Tensor | None,
    bias: Tensor | None,
) -> tuple[int, ...]:
    """Validate shapes and return ``normalized_shape`` as a tuple.

    Raises:
        ValueError: when the trailing dims of ``x`` or the affine parameters do not match.
        TypeError: when ``x`` is not a floating-point tensor.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) == 0 or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty and positive, got {shape}")
    if tuple(x.shape[-len(shape) :]) != shape or x.dim() < len(shape):
        raise ValueError(
            f"the last {len(shape)} dim(s) of x {tuple(x.shape)} must equal normalized_shape {shape}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(
                f"{name} must have shape normalized_shape {shape}, got {tuple(p.shape)}"
            )
    return shape


def naive_layer_norm(
    x: Tensor,
    normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the trailing dims.

    Args:
        x: ``[..., *normalized_shape]`` input.
        normalized_shape: trailing shape to normalise over (``F`` elements in total).
        weight: ``[*normalized_shape]`` gain γ, or ``None`` (1).
        bias: ``[*normalized_shape]`` shift β, or ``None`` (0).
        eps: added to the biased variance inside the square root.

    Returns:
        ``[..., *normalized_shape]`` in ``x.dtype``.
    """
    shape = check_norm_args(x, normalized_shape, weight, bias)
    dims = tuple(range(-len(shape), 0))
    xs = x.to(stat_dtype(x.dtype))
    mu = xs.mean(dim=dims, keepdim=True)
    var = ((xs - mu) ** 2).mean(dim=dims, keepdim=True)
    y = (xs - mu) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def naive_rms_norm(
    x: Tensor,
    normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``y = x / sqrt(mean(x^2) + eps) * weight`` over the trailing dims.

    Args:
        x: ``[..., *normalized_shape]`` input.
        normalized_shape: trailing shape to normalise over.
        weight: ``[*normalized_shape]`` gain γ, or ``None`` (1).
        eps: ``None`` means ``torch.finfo(x.dtype).eps`` (as ``torch.nn.RMSNorm``).

    Returns:
        ``[..., *normalized_shape]`` in ``x.dtype``.
    """
    shape = check_norm_args(x, normalized_shape, weight, None)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    dims = tuple(range(-len(shape), 0))
    xs = x.to(stat_dtype(x.dtype))
    y = xs * torch.rsqrt((xs * xs).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)
