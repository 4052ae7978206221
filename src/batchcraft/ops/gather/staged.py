"""Staged gather: multi-threaded CPU gather into a pinned staging buffer, then an async copy.

This is the conventional data path done well: the CPU gathers the requested
rows with ``torch.index_select(..., out=staging)`` (intra-op threads) into one of two staging
buffers, and the buffer is copied to the device with ``non_blocking=True`` on a side stream. A
buffer is reused only after the event recorded behind its copy has completed, so gathering batch
t+1 overlaps the copy of batch t. Without CUDA the staging buffers are ordinary (unpinned) memory
and the "copy" is a host copy: the ring logic is the same and is tested on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.gather.naive import check_index

__all__ = ["StagedGatherer"]


class StagedGatherer:
    """Double-buffered staged gather of rows of one host table.

    Args:
        x: ``[N, F]`` contiguous host table.
        device: destination device (``cpu`` emulates the ring without CUDA).
        staging_rows: initial rows per staging buffer (grown on demand).
        num_buffers: ring size (2 = double buffering).
        num_threads: intra-op threads for the gather (``None`` = torch's setting).
    """

    def __init__(
        self,
        x: Tensor,
        device: torch.device | str = "cpu",
        *,
        staging_rows: int | None = None,
        num_buffers: int = 2,
        num_threads: int | None = None,
    ) -> None:
        if x.dim() != 2 or x.device.type != "cpu":
            raise ValueError(
                f"x must be a 2-D CPU table [N, F], got {tuple(x.shape)} on {x.device}"
            )
        if num_buffers < 1:
            raise ValueError(f"num_buffers must be >= 1, got {num_buffers}")
        if staging_rows is not None and staging_rows < 0:
            raise ValueError(f"staging_rows must be >= 0, got {staging_rows}")
        self.x = x
        self.device = torch.device(device)
        self.num_threads = num_threads
        self.pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._buffers: list[Tensor | None] = [None] * num_buffers
        self._events: list[Any] = [None] * num_buffers
        self._slot = 0
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if staging_rows:
            for i in range(num_buffers):
                self._buffers[i] = self._alloc(staging_rows)

    def _alloc(self, rows: int) -> Tensor:
        buf = torch.empty(rows, self.x.shape[1], dtype=self.x.dtype)
        return buf.pin_memory() if self.pin else buf

    def _buffer(self, slot: int, rows: int) -> Tensor:
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()  # the previous copy out of this buffer must have finished
            self._events[slot] = None
        buf = self._buffers[slot]
        if buf is None or buf.shape[0] < rows:
            buf = self._alloc(max(rows, 1))
            self._buffers[slot] = buf
        return buf[:rows]

    def gather(self, index: Tensor, *, out: Tensor | None = None, stream: Any = None) -> Tensor:
        """``x[index]`` on ``self.device``.

        Args:
            index: ``[B]`` int32/int64 row ids (any device).
            out: optional ``[B, F]`` destination on ``self.device``.
            stream: CUDA stream for the copy (default: this gatherer's side stream).

        Returns:
            ``[B, F]`` rows; on CUDA the copy is enqueued on ``stream`` and the current stream
            waits for it, so the result is safe to use on the current stream.
        """
        check_index(index, self.x.shape[0])
        b = index.shape[0]
        slot = self._slot
        self._slot = (slot + 1) % len(self._buffers)
        staging = self._buffer(slot, b)
        prev = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            torch.index_select(self.x, 0, index.cpu(), out=staging)
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(prev)
        if out is None:
            out = torch.empty(b, self.x.shape[1], dtype=self.x.dtype, device=self.device)
        elif out.shape != (b, self.x.shape[1]) or out.dtype != self.x.dtype:
            raise ValueError(
                f"out must have shape {(b, self.x.shape[1])} and dtype {self.x.dtype}, "
                f"got {tuple(out.shape)} {out.dtype}"
            )
        elif out.device != self.device:
            raise ValueError(f"out must be on {self.device}, got {out.device}")
        if self.device.type != "cuda":
            out.copy_(staging)
            return out
        side: Any = stream if stream is not None else self._stream
        side.wait_stream(torch.cuda.current_stream(self.device))  # out was allocated there
        with torch.cuda.stream(side):
            out.copy_(staging, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(side)
        self._events[slot] = ev
        torch.cuda.current_stream(self.device).wait_event(ev)
        out.record_stream(side)
        return out
