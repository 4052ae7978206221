"""Reference row gather: ``x.index_select(0, index)`` on the host, then a copy to the target device.

This is the conventional data path of GNN mini-batch training (PyG/DGL default): the CPU gathers the
scattered rows into a dense buffer, and the buffer is copied to the accelerator. It is the ground
truth every other backend is compared with, bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_index", "flatten_rows", "naive_gather"]

_INDEX_DTYPES = (torch.int32, torch.int64)


def flatten_rows(x: Tensor) -> Tensor:
    """View ``x: [N, ...]`` as a 2-D table ``[N, F]`` (F = product of trailing dims).

    Raises:
        ValueError: if ``x`` has no row dimension (0-D).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have a row dimension: expected shape [N, F] or [N, ...], got 0-D")
    if x.dim() == 1:
        return x.reshape(-1, 1)
    return x.reshape(x.shape[0], -1)


def check_index(index: Tensor, num_rows: int, *, check_bounds: bool = True) -> None:
    """Validate a gather index: a 1-D int32/int64 tensor with values in ``[0, num_rows)``.

    Args:
        index: ``[B]`` row ids.
        num_rows: N, the number of rows of the table.
        check_bounds: also check the value range (one min/max reduction).

    Raises:
        TypeError: non-tensor or non-integer index.
        ValueError: index is not 1-D.
        IndexError: a negative or out-of-range row id.
    """
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in _INDEX_DTYPES:
        raise TypeError(f"index must be int32 or int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D [B], got shape {tuple(index.shape)}")
    if check_bounds and index.numel() > 0:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0:
            raise IndexError(
                f"index contains {lo}; row ids must be >= 0 (negative ids are not wrapped)"
            )
        if hi >= num_rows:
            raise IndexError(f"index contains {hi}; row ids must be < num_rows ({num_rows})")


def naive_gather(x: Tensor, index: Tensor, device: torch.device | str | None = None) -> Tensor:
    """Gather rows on the host, then copy them to ``device`` (the reference path).

    Args:
        x: ``[N, ...]`` host (or any-device) table.
        index: ``[B]`` int32/int64 row ids (any device).
        device: where the result goes; ``None`` keeps ``x.device``.

    Returns:
        ``[B, ...]`` rows ``x[index]`` on ``device``, dtype of ``x``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have a row dimension: expected shape [N, F] or [N, ...], got 0-D")
    check_index(index, x.shape[0])
    rows = x.index_select(0, index.to(x.device))
    return rows if device is None else rows.to(device)
