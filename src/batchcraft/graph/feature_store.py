"""A node-feature table kept in (pinned) host memory, gathered by row onto the compute device.

:class:`PinnedFeatureStore` owns the host table for its whole life: it pins it
once (in place with ``cudaHostRegister`` or by a pinned copy), picks one gather backend, and
unpins exactly once on :meth:`close`. Backends:

* ``uva-triton``: the aligned Triton kernel reads the rows from pinned memory on the GPU;
* ``uva-view``: stock ``index_select`` on a CUDA view of the pinned table (naive zero-copy);
* ``staged``: CPU gather into pinned double buffers, async copy on a side stream;
* ``cpu``: ``index_select`` on the host, result on the CPU (no CUDA machine).

``auto`` chooses in that order. Every backend returns exactly ``x[index]``.
"""

from __future__ import annotations

import contextlib
import warnings
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.gather.naive import check_index, flatten_rows
from batchcraft.ops.gather.staged import StagedGatherer

__all__ = ["BACKENDS", "PinnedFeatureStore", "is_uva_available"]

BACKENDS = ("uva-triton", "uva-view", "staged", "cpu")
_ALIASES = {"uva": "uva-triton", "uva_triton": "uva-triton", "uva_view": "uva-view"}
PINS = ("auto", "inplace", "copy", "none")


def is_uva_available(device: torch.device | str | None = None) -> bool:
    """Whether the GPU can read pinned host memory through UVA (no CUDA call without CUDA)."""
    import sys

    if not torch.cuda.is_available() or sys.maxsize <= 2**32:
        return False
    dev = torch.device(device) if device is not None else torch.device("cuda")
    return dev.type == "cuda"


def _triton_usable() -> bool:
    from batchcraft._capabilities import has_triton, triton_interpret

    return has_triton() and (torch.cuda.is_available() or triton_interpret())


class PinnedFeatureStore:
    """Row-gatherable feature table ``x: [N, ...]`` owned by the store.

    Args:
        x: host feature table; trailing dims are flattened to F and restored on output.
        pin: ``"auto"`` (in place when possible, else copy; nothing without CUDA), ``"inplace"``
            (register x's own memory; x must be contiguous), ``"copy"`` (pinned copy), ``"none"``.
        backend: ``"auto"`` or one of :data:`BACKENDS` (``"uva"`` / ``"uva_view"`` accepted).
        device: where gathered rows go (default: CUDA when available, else CPU).
        sort_indices: ``uva-triton`` visits rows in ascending source order.
        max_programs_per_sm: persistent-grid bound of the ``uva-triton`` kernel.
        staging_rows: initial staging-buffer rows of the ``staged`` backend.

    Example::

        with PinnedFeatureStore(x, backend="auto") as store:
            rows = store.gather(n_id)  # == x[n_id].to(store.device)
    """

    def __init__(
        self,
        x: Tensor,
        *,
        pin: str = "auto",
        backend: str = "auto",
        device: torch.device | str | None = None,
        sort_indices: bool = False,
        max_programs_per_sm: int = 4,
        staging_rows: int | None = None,
    ) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"x must live in host memory (device cpu), got {x.device}")
        if x.dim() == 0:
            raise ValueError("x must be a table [N, F] or [N, ...], got a 0-D tensor")
        if pin not in PINS:
            raise ValueError(f"pin must be one of {PINS}, got {pin!r}")
        backend = _ALIASES.get(backend, backend)
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if max_programs_per_sm < 1:
            raise ValueError(f"max_programs_per_sm must be >= 1, got {max_programs_per_sm}")
        cuda = torch.cuda.is_available()
        if pin == "inplace" and not x.is_contiguous():
            raise ValueError(
                "pin='inplace' needs a contiguous tensor: pinning would register a temporary "
                "contiguous copy, not your tensor; use pin='copy' (or pass x.contiguous())"
            )
        if pin in ("inplace", "copy") and not cuda:
            raise ValueError(
                f"pin={pin!r} needs CUDA (pinned memory is page-locked for DMA by a GPU); "
                "on a CPU-only machine use pin='none' or pin='auto'"
            )
        if not x.is_contiguous():
            warnings.warn(
                "PinnedFeatureStore: x is not contiguous; storing one contiguous copy",
                stacklevel=2,
            )
            x = x.contiguous()
        self._row_shape = tuple(x.shape[1:])
        table = flatten_rows(x)
        self._registered = False
        if pin == "auto":
            pin = "none" if not cuda else ("inplace" if self._try_register(table) else "copy")
        elif pin == "inplace" and not self._try_register(table):
            raise RuntimeError("cudaHostRegister failed for x; use pin='copy'")
        if pin == "copy":
            table = table.pin_memory()
        self.pin = pin
        self._table: Tensor | None = table
        self.sort_indices = sort_indices
        self.max_programs_per_sm = max_programs_per_sm
        self.backend = self._choose_backend(backend, table)
        if device is None:
            device = "cuda" if cuda and self.backend != "cpu" else "cpu"
        self.device = torch.device(device)
        if self.backend == "cpu" and self.device.type != "cpu":
            raise ValueError("backend='cpu' returns rows on the CPU; use device='cpu'")
        if self.backend.startswith("uva") and not cuda and self.device.type != "cpu":
            raise ValueError(f"backend={self.backend!r} without CUDA runs only on device='cpu'")
        self._staged = (
            StagedGatherer(table, self.device, staging_rows=staging_rows)
            if self.backend == "staged"
            else None
        )
        self._view: Tensor | None = None

    def _try_register(self, table: Tensor) -> bool:
        """Page-lock ``table``'s memory in place (mapped, portable). True on success."""
        if table.numel() == 0:
            return False
        try:
            cudart: Any = torch.cuda.cudart()
            err = cudart.cudaHostRegister(table.data_ptr(), table.numel() * table.element_size(), 3)
        except Exception:
            return False
        self._registered = int(getattr(err, "value", err)) == 0
        return self._registered

    def _choose_backend(self, backend: str, table: Tensor) -> str:
        cuda = torch.cuda.is_available()
        pinned = cuda and table.is_pinned()
        if backend == "auto":
            if pinned and is_uva_available() and _triton_usable():
                return "uva-triton"
            if pinned and is_uva_available():
                return "uva-view"
            return "staged" if cuda else "cpu"
        if backend == "uva-triton":
            if not _triton_usable():
                raise ValueError(
                    "backend='uva-triton' needs Triton and CUDA (or TRITON_INTERPRET=1 for tests)"
                )
            if cuda and not pinned:
                raise ValueError("backend='uva-triton' needs a pinned table: use pin='auto'/'copy'")
        if backend == "uva-view" and not pinned:
            raise ValueError("backend='uva-view' needs CUDA and a pinned table (pin='auto'/'copy')")
        return backend

    # ------------------------------------------------------------------ API
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._live().shape[0], *self._row_shape))

    @property
    def dtype(self) -> torch.dtype:
        return self._live().dtype

    @property
    def num_rows(self) -> int:
        return self._live().shape[0]

    @property
    def closed(self) -> bool:
        return self._table is None

    def _live(self) -> Tensor:
        if self._table is None:
            raise RuntimeError("PinnedFeatureStore is closed; create a new store to gather again")
        return self._table

    def gather(self, index: Tensor, *, out: Tensor | None = None, stream: Any = None) -> Tensor:
        """Rows ``x[index]`` on :attr:`device`.

        Args:
            index: ``[B]`` int32/int64 row ids (CPU or CUDA).
            out: optional ``[B, ...]`` destination on :attr:`device` with the table's dtype.
            stream: CUDA stream to gather on (default: the current stream; ``staged`` uses its
                side stream).

        Returns:
            ``[B, ...]`` rows, bit-identical to ``x[index]``.
        """
        table = self._live()
        check_index(index, table.shape[0])
        b, f = index.shape[0], table.shape[1]
        flat_out = None
        if out is not None:
            if not isinstance(out, Tensor):
                raise TypeError(f"out must be a tensor, got {type(out).__name__}")
            want = (b, *self._row_shape)
            if tuple(out.shape) != want or out.dtype != table.dtype or out.device != self.device:
                raise ValueError(
                    f"out must have shape {want}, dtype {table.dtype} and device {self.device}; "
                    f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
                )
            if not out.is_contiguous():
                raise ValueError("out must be contiguous")
            flat_out = out.view(b, f)
        ctx = torch.cuda.stream(stream) if stream is not None and self.backend != "staged" else None
        if ctx is not None:
            ctx.__enter__()
        try:
            rows = self._gather(table, index, flat_out, stream)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
        return out if out is not None else rows.view(b, *self._row_shape)

    def _gather(self, table: Tensor, index: Tensor, out: Tensor | None, stream: Any) -> Tensor:
        if self.backend == "cpu":
            idx = index.cpu()
            if out is None:
                return table.index_select(0, idx)
            return torch.index_select(table, 0, idx, out=out)
        if self.backend == "staged":
            assert self._staged is not None
            return self._staged.gather(index, out=out, stream=stream)
        if self.backend == "uva-view":
            if self._view is None:
                from batchcraft.ops.gather import as_cuda_view

                self._view = as_cuda_view(table)
            idx = index.to(self._view.device)
            if out is None:
                return self._view.index_select(0, idx)
            return torch.index_select(self._view, 0, idx, out=out)
        from batchcraft.ops.gather import uva_gather

        max_programs = None
        if self.device.type == "cuda":
            sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            max_programs = self.max_programs_per_sm * sms
        return uva_gather(
            table,
            index,
            out=out,
            sort_indices=self.sort_indices,
            max_programs=max_programs,
            check_bounds=False,  # already checked above
        )

    def close(self) -> None:
        """Release the table: unregister an in-place pin exactly once; later gathers raise."""
        if self._table is None:
            return
        if self._registered:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaHostUnregister(self._table.data_ptr())
            self._registered = False
        self._table = None
        self._view = None
        self._staged = None

    def __enter__(self) -> PinnedFeatureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        state = (
            "closed" if self._table is None else f"shape={tuple(self.shape)}, dtype={self.dtype}"
        )
        return f"PinnedFeatureStore({state}, backend={self.backend!r}, pin={self.pin!r}, device={self.device})"
