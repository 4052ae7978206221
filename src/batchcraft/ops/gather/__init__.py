"""Row gathering from (pinned) host feature tables: reference, staged, naive zero-copy, aligned UVA.

``gather_rows(x, index, impl=...)`` dispatches to:

* ``"naive"``: :func:`naive_gather`, CPU ``index_select`` then ``.to(device)`` (the reference);
* ``"staged"``: :class:`StagedGatherer`, CPU gather into pinned staging + async copy;
* ``"uva_view"``: stock ``index_select`` on :func:`as_cuda_view` of a pinned table (naive zero-copy);
* ``"uva"``: :func:`uva_gather`, the aligned Triton kernel (imported lazily).

Shapes: x ``[N, F]``, index ``[B]`` -> ``[B, F]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.gather.alignment import LAYOUTS, aligned_columns, request_efficiency
from batchcraft.ops.gather.naive import check_index, flatten_rows, naive_gather
from batchcraft.ops.gather.staged import StagedGatherer

__all__ = [
    "LAYOUTS",
    "StagedGatherer",
    "aligned_columns",
    "as_cuda_view",
    "check_index",
    "flatten_rows",
    "gather_rows",
    "naive_gather",
    "request_efficiency",
    "uva_gather",
]

IMPLS = ("auto", "naive", "staged", "uva_view", "uva")


def uva_gather(x: Tensor, index: Tensor, **kwargs: Any) -> Tensor:
    """Aligned Triton zero-copy gather; see :func:`batchcraft.ops.gather.triton.uva_gather`."""
    from batchcraft._capabilities import require

    require("triton", "the uva gather kernel")
    from batchcraft.ops.gather.triton import uva_gather as _uva

    return _uva(x, index, **kwargs)


def as_cuda_view(x: Tensor) -> Tensor:
    """CUDA alias of a pinned host tensor; see :func:`batchcraft.ops.gather.triton.as_cuda_view`."""
    from batchcraft.ops.gather.triton import as_cuda_view as _view

    return _view(x)


def gather_rows(
    x: Tensor, index: Tensor, *, device: torch.device | str | None = None, impl: str = "auto"
) -> Tensor:
    """``x[index]`` placed on ``device`` with the chosen implementation.

    Args:
        x: ``[N, F]`` table (pinned host memory for the zero-copy impls).
        index: ``[B]`` int32/int64 row ids.
        device: destination; ``None`` = CUDA for the zero-copy impls, else ``x.device``.
        impl: one of ``"auto" | "naive" | "staged" | "uva_view" | "uva"``; ``auto`` picks ``uva``
            for a pinned table on a CUDA machine with Triton, else ``naive``.

    Returns:
        ``[B, F]`` rows.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        from batchcraft._capabilities import has_triton

        pinned = torch.cuda.is_available() and x.device.type == "cpu" and x.is_pinned()
        impl = "uva" if pinned and has_triton() else "naive"
    if impl == "naive":
        return naive_gather(x, index, device)
    if impl == "staged":
        return StagedGatherer(flatten_rows(x).contiguous(), device or "cpu").gather(index)
    if impl == "uva_view":
        check_index(index, x.shape[0])
        view = as_cuda_view(x)
        return view.index_select(0, index.to(view.device))
    out = uva_gather(flatten_rows(x), index)
    return out if device is None else out.to(device)
