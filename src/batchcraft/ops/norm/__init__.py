"""LayerNorm / RMSNorm ops with a reference, torch native and Triton paths (docs/layernorm.md).

``impl`` selects the path: ``"naive"`` (the formula, :mod:`.naive`), ``"torch"``
(``F.layer_norm`` / ``F.rms_norm``), ``"triton"`` (:mod:`.triton`, own forward and backward
kernels; imported lazily) or ``"auto"`` (Triton on CUDA when installed, torch native elsewhere).

Example::

    y = layer_norm(x, (512,), weight, bias)                      # x: [B, T, 512]
    y, s = add_rms_norm(x, residual, 512, weight, residual_in_fp32=True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft import _capabilities as caps
from batchcraft.ops.norm.naive import check_norm_args, naive_layer_norm, naive_rms_norm

__all__ = [
    "IMPLS",
    "add_layer_norm",
    "add_rms_norm",
    "layer_norm",
    "naive_layer_norm",
    "naive_rms_norm",
    "resolve_impl",
    "rms_norm",
]

IMPLS = ("auto", "naive", "torch", "triton")
ShapeLike = int | list[int] | tuple[int, ...] | torch.Size
# fp64 stays on torch: the Triton kernels compute in fp32
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_impl(impl: str, x: Tensor) -> str:
    """Map ``"auto"`` to a concrete path for ``x``; validate the name.

    Raises:
        ValueError: for an unknown ``impl``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if x.is_cuda and caps.has_triton() and x.dtype in _TRITON_DTYPES:
        return "triton"
    return "torch"


def _triton(
    x: Tensor,
    shape: tuple[int, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    is_rms: bool,
    residual: Tensor | None = None,
    residual_in_fp32: bool = False,
) -> tuple[Tensor, Tensor]:
    from batchcraft.ops.norm.triton import triton_norm

    feat = math.prod(shape)
    lead = x.shape[: x.dim() - len(shape)]
    x2 = x.reshape(-1, feat)  # [N, F]
    r2 = residual.reshape(-1, feat) if residual is not None else None
    w = weight.reshape(feat) if weight is not None else None
    b = bias.reshape(feat) if bias is not None else None
    y, s = triton_norm(x2, w, b, eps, is_rms=is_rms, residual=r2, residual_in_fp32=residual_in_fp32)
    y = y.reshape(*lead, *shape)
    return y, (s.reshape(*lead, *shape) if residual is not None else s)


def layer_norm(
    x: Tensor,
    normalized_shape: ShapeLike,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    impl: str = "auto",
) -> Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims (same contract as ``F.layer_norm``).

    Args:
        x: ``[..., *normalized_shape]``; fp16/bf16 inputs use fp32 statistics.
        normalized_shape: trailing shape normalised over (``F`` elements).
        weight: ``[*normalized_shape]`` gain γ or ``None``.
        bias: ``[*normalized_shape]`` shift β or ``None``.
        eps: added to the biased variance inside the square root.
        impl: ``"auto" | "naive" | "torch" | "triton"``.

    Returns:
        ``[..., *normalized_shape]`` in ``x.dtype``.
    """
    shape = check_norm_args(x, normalized_shape, weight, bias)
    path = resolve_impl(impl, x)
    if path == "naive":
        return naive_layer_norm(x, shape, weight, bias, eps)
    if path == "triton":
        return _triton(x, shape, weight, bias, eps, False)[0]
    return F.layer_norm(x, shape, weight, bias, eps)


def rms_norm(
    x: Tensor,
    normalized_shape: ShapeLike,
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    impl: str = "auto",
) -> Tensor:
    """RMSNorm over the trailing dims (same contract as ``F.rms_norm``).

    Args:
        x: ``[..., *normalized_shape]``.
        normalized_shape: trailing shape normalised over.
        weight: ``[*normalized_shape]`` gain γ or ``None``.
        eps: ``None`` means ``torch.finfo(x.dtype).eps``.
        impl: ``"auto" | "naive" | "torch" | "triton"``.

    Returns:
        ``[..., *normalized_shape]`` in ``x.dtype``.
    """
    shape = check_norm_args(x, normalized_shape, weight, None)
    path = resolve_impl(impl, x)
    if path == "naive":
        return naive_rms_norm(x, shape, weight, eps)
    if path == "triton":
        e = torch.finfo(x.dtype).eps if eps is None else eps
        return _triton(x, shape, weight, None, e, True)[0]
    return F.rms_norm(x, shape, weight, eps)


def _add(x: Tensor, residual: Tensor, residual_in_fp32: bool) -> Tensor:
    if not isinstance(residual, Tensor) or residual.shape != x.shape:
        got = tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__
        raise ValueError(f"residual must have the shape of x {tuple(x.shape)}, got {got}")
    if residual_in_fp32:
        return x.float() + residual.float()
    return x + residual.to(x.dtype)


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: ShapeLike,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual_in_fp32: bool = False,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused ``s = x + residual; y = LayerNorm(s)``.

    Args:
        x: ``[..., *normalized_shape]``.
        residual: same shape as ``x``.
        normalized_shape, weight, bias, eps, impl: as :func:`layer_norm`.
        residual_in_fp32: keep ``s`` in fp32 (the sum is otherwise rounded to ``x.dtype``).

    Returns:
        ``(y, s)``: ``y`` in ``x.dtype``, ``s`` in fp32 or ``x.dtype``.
    """
    shape = check_norm_args(x, normalized_shape, weight, bias)
    path = resolve_impl(impl, x)
    if path == "triton":
        if not isinstance(residual, Tensor) or residual.shape != x.shape:
            _add(x, residual, residual_in_fp32)  # raises the shape error
        return _triton(x, shape, weight, bias, eps, False, residual, residual_in_fp32)
    s = _add(x, residual, residual_in_fp32)
    fn = naive_layer_norm if path == "naive" else F.layer_norm
    w, b = (p.to(s.dtype) if p is not None else None for p in (weight, bias))
    return fn(s, shape, w, b, eps).to(x.dtype), s


def add_rms_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: ShapeLike,
    weight: Tensor | None = None,
    eps: float | None = None,
    *,
    residual_in_fp32: bool = False,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused ``s = x + residual; y = RMSNorm(s)``; returns ``(y, s)`` (see :func:`add_layer_norm`)."""
    shape = check_norm_args(x, normalized_shape, weight, None)
    path = resolve_impl(impl, x)
    e = torch.finfo(x.dtype).eps if eps is None else eps
    if path == "triton":
        if not isinstance(residual, Tensor) or residual.shape != x.shape:
            _add(x, residual, residual_in_fp32)
        return _triton(x, shape, weight, None, e, True, residual, residual_in_fp32)
    s = _add(x, residual, residual_in_fp32)
    fn = naive_rms_norm if path == "naive" else F.rms_norm
    w = weight.to(s.dtype) if weight is not None else None
    return fn(s, shape, w, e).to(x.dtype), s
