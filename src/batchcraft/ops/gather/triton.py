"""Aligned zero-copy row gather in Triton (``uva-triton``). Imported lazily.

GPU threads read the requested rows straight out of a pinned, device-addressable host table. Each
program of a bounded, persistent grid walks over output rows; for source row ``i`` starting at byte
address ``s`` it steps back ``off = (s mod 128) / esz`` elements so that every tile starts on a
128-byte boundary, making each lane group's loads full, aligned PCIe requests. Columns outside
``[0, F)`` are masked. With ``sort_indices`` the rows are visited in ascending source order (better
locality) and stored through the inverse permutation. The kernel also runs in Triton's CPU
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, which is how it is tested without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from batchcraft.ops.gather.naive import check_index

__all__ = ["as_cuda_view", "uva_gather"]

_SEGMENT = 128


@triton.jit
def _aligned_gather_kernel(
    table_ptr,
    index_ptr,
    perm_ptr,
    out_ptr,
    num_out,
    num_features,
    base_off,
    num_programs,
    ESZ: tl.constexpr,
    TILE: tl.constexpr,
    HAS_PERM: tl.constexpr,
    BASE_ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0)
    lane = tl.arange(0, TILE)
    seg: tl.constexpr = 128 // ESZ
    for o in range(pid, num_out, num_programs):  # persistent loop over output rows
        src = tl.load(index_ptr + o).to(tl.int64)
        if HAS_PERM:
            dst = tl.load(perm_ptr + o).to(tl.int64)
        else:
            dst = src * 0 + o  # int64 (loop counters are int32 when compiled)
        row = src * num_features  # element offset of the source row
        off = (base_off + row) % seg  # elements back to the previous 128-B boundary
        n_tiles = tl.cdiv(num_features + off, TILE)
        for t in range(0, n_tiles):
            start = row - off + t * TILE  # aligned tile start (element offset from table_ptr)
            if BASE_ALIGNED:
                start = tl.multiple_of(start, seg)
            offs = start + lane
            cols = offs - row
            m = (cols >= 0) & (cols < num_features)
            v = tl.load(table_ptr + offs, mask=m)
            tl.store(out_ptr + dst * num_features + cols, v, mask=m)


_HOST_OK: bool | None = None


def _accepts_host_tensors() -> bool:
    """Whether this Triton build launches kernels on a pinned CPU tensor (probed once on CUDA)."""
    global _HOST_OK
    if _HOST_OK is None:
        probe = torch.arange(64, dtype=torch.float32).view(2, 32).pin_memory()
        idx = torch.tensor([1, 0], device="cuda")
        out = torch.empty(2, 32, device="cuda")
        try:
            _aligned_gather_kernel[(1,)](
                probe, idx, idx, out, 2, 32, 0, 1,
                ESZ=4, TILE=32, HAS_PERM=False, BASE_ALIGNED=False,
            )  # fmt: skip
            torch.cuda.synchronize()
            _HOST_OK = bool(torch.equal(out.cpu(), probe[[1, 0]]))
        except (ValueError, RuntimeError):
            _HOST_OK = False
    return _HOST_OK


def as_cuda_view(x: Tensor) -> Tensor:
    """A CUDA tensor aliasing pinned host tensor ``x`` through its UVA pointer (keeps ``x`` alive).

    Args:
        x: pinned, contiguous CPU tensor.

    Returns:
        A tensor on the current CUDA device with the same shape, dtype and memory as ``x``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("as_cuda_view needs CUDA: there is no CUDA device on this machine")
    if x.device.type != "cpu" or not x.is_pinned():
        raise ValueError(
            "as_cuda_view needs a pinned CPU tensor (x.pin_memory() or an in-place pin)"
        )
    if not x.is_contiguous():
        raise ValueError("as_cuda_view needs a contiguous tensor")

    class _Holder:
        def __init__(self, t: Tensor) -> None:
            self._keep = t  # keeps the host storage alive as long as the view
            typestr = {
                torch.float32: "<f4",
                torch.float16: "<f2",
                torch.float64: "<f8",
                torch.int64: "<i8",
                torch.int32: "<i4",
                torch.int16: "<i2",
                torch.int8: "|i1",
                torch.uint8: "|u1",
                torch.bool: "|b1",
            }
            if t.dtype not in typestr and t.dtype != torch.bfloat16:
                raise TypeError(f"as_cuda_view does not support dtype {t.dtype}")
            self.__cuda_array_interface__ = {
                "shape": tuple(t.shape),
                "typestr": typestr.get(t.dtype, "<i2"),
                "data": (t.data_ptr(), False),
                "version": 3,
                "strides": None,
            }

    holder = _Holder(x)
    view = torch.as_tensor(holder, device="cuda")
    if x.dtype == torch.bfloat16:
        view = view.view(torch.bfloat16)
    view._batchcraft_host = holder  # type: ignore[attr-defined]  # lifetime link
    return view


def uva_gather(
    x: Tensor,
    index: Tensor,
    *,
    out: Tensor | None = None,
    sort_indices: bool = False,
    max_programs: int | None = None,
    check_bounds: bool = True,
    tile: int | None = None,
) -> Tensor:
    """``x[index]`` with the aligned Triton kernel.

    Args:
        x: ``[N, F]`` contiguous table: pinned CPU memory (or its CUDA view) on a GPU; any CPU
            tensor under ``TRITON_INTERPRET=1``.
        index: ``[B]`` int32/int64 row ids.
        out: optional ``[B, F]`` contiguous output (CUDA; CPU under the interpreter).
        sort_indices: visit rows in ascending source order, store through the inverse permutation.
        max_programs: bound on the persistent grid (leaves SMs free for concurrent compute).
        check_bounds: validate the index range (one min/max reduction).
        tile: elements per tile (multiple of ``128 / esz``); default 4 segments, at most 1024.

    Returns:
        ``[B, F]`` rows, same dtype as ``x``.
    """
    from batchcraft._capabilities import triton_interpret

    interpret = triton_interpret()
    if x.dim() != 2:
        raise ValueError(f"x must be a 2-D table [N, F], got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous (pin a contiguous copy of the table)")
    check_index(index, x.shape[0], check_bounds=check_bounds)
    if interpret:
        target = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "uva_gather needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)"
            )
        if x.device.type == "cpu" and not x.is_pinned():
            raise ValueError(
                "uva_gather reads host memory from the GPU, so x must be pinned "
                "(x.pin_memory() or PinnedFeatureStore); pageable memory is not device-addressable"
            )
        target = x.device if x.is_cuda else torch.device("cuda", torch.cuda.current_device())
    b, f = index.shape[0], x.shape[1]
    if out is None:
        out = torch.empty(b, f, dtype=x.dtype, device=target)
    else:
        if out.shape != (b, f) or out.dtype != x.dtype:
            raise ValueError(
                f"out must have shape {(b, f)} and dtype {x.dtype}, got {tuple(out.shape)} {out.dtype}"
            )
        if not out.is_contiguous() or out.device != target:
            raise ValueError(f"out must be contiguous and on {target}, got device {out.device}")
    if b == 0 or f == 0:
        return out
    esz = x.element_size()
    seg = _SEGMENT // esz
    tile = tile or max(seg, min(1024, triton.next_power_of_2(f + seg - 1)))
    if tile % seg or tile & (tile - 1):
        raise ValueError(f"tile ({tile}) must be a power of two and a multiple of 128/esz = {seg}")
    idx = index.to(target)
    perm = idx
    if sort_indices:
        idx, perm = torch.sort(idx)
    if max_programs is None:
        if target.type == "cuda":
            sms = torch.cuda.get_device_properties(target).multi_processor_count
            max_programs = 4 * sms
        else:
            max_programs = 8
    if max_programs < 1:
        raise ValueError(f"max_programs must be >= 1, got {max_programs}")
    grid = (min(b, max_programs),)
    ptr = x.data_ptr()
    table = x
    if not interpret and x.device.type == "cpu":
        # Triton normally accepts a pinned host tensor (its UVA pointer is valid on the device);
        # if this Triton build refuses host tensors, hand it the CUDA alias instead.
        table = x if _accepts_host_tensors() else as_cuda_view(x)
    _aligned_gather_kernel[grid](
        table,
        idx,
        perm,
        out,
        b,
        f,
        (ptr % _SEGMENT) // esz,
        grid[0],
        ESZ=esz,
        TILE=tile,
        HAS_PERM=sort_indices,
        BASE_ALIGNED=ptr % _SEGMENT == 0,
    )
    return out
