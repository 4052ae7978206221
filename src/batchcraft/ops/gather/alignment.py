"""Pure-torch model of the aligned gather kernel's address arithmetic (docs/zero_copy.md).

A 32-lane group (one warp) issues one PCIe read request per distinct 128-byte segment it touches in
one load instruction; efficiency = useful bytes / (requests * 128). These functions replay the lane
-> address mapping of four layouts on random rows so the kernel's design can be checked without a
GPU:

* ``flat``: one lane per output element, consecutive output elements per group (stock indexing).
* ``circular``: flat plus the paper's per-row circular shift (source address = output address mod 128).
* ``row``: lanes restart at column 0 for every row.
* ``row_aligned``: ours; every row's tiles start at the 128-byte boundary at or before the row start.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "SEGMENT_BYTES", "aligned_columns", "request_efficiency"]

SEGMENT_BYTES = 128
LANES = 32
LAYOUTS = ("flat", "circular", "row", "row_aligned")


def aligned_columns(row_start_bytes: Tensor, row_bytes: int, elem_size: int, tile: int) -> Tensor:
    """Column each lane of each tile reads in the row-aligned kernel (-1 = masked lane).

    For a row starting at byte address ``s``, the kernel steps back ``off = (s mod 128) / esz``
    elements so tile ``t`` covers columns ``t*tile - off + arange(tile)``.

    Args:
        row_start_bytes: ``[R]`` absolute byte address of each row's first element (multiples of
            ``elem_size``).
        row_bytes: S = F * esz.
        elem_size: bytes per element (1, 2, 4 or 8).
        tile: elements per tile; must be a positive multiple of ``128 / elem_size``.

    Returns:
        ``[R, T, tile]`` int64 columns in ``[0, F)`` or -1, T = max tiles over rows.
    """
    if elem_size not in (1, 2, 4, 8):
        raise ValueError(f"elem_size must be 1, 2, 4 or 8 bytes, got {elem_size}")
    if row_bytes <= 0 or row_bytes % elem_size:
        raise ValueError(f"row_bytes ({row_bytes}) must be a positive multiple of elem_size")
    seg = SEGMENT_BYTES // elem_size
    if tile <= 0 or tile % seg:
        raise ValueError(f"tile ({tile}) must be a positive multiple of 128/elem_size = {seg}")
    if bool((row_start_bytes % elem_size != 0).any()):
        raise ValueError("row_start_bytes must be multiples of elem_size")
    f = row_bytes // elem_size
    off = (row_start_bytes % SEGMENT_BYTES) // elem_size  # [R]
    num_tiles = -(-(f + seg - 1) // tile)  # enough for the largest shift
    t = torch.arange(num_tiles).view(1, -1, 1)
    lane = torch.arange(tile).view(1, 1, -1)
    cols = t * tile - off.view(-1, 1, 1) + lane  # [R, T, tile]
    return torch.where((cols >= 0) & (cols < f), cols, torch.full_like(cols, -1))


def _count_requests(addr: Tensor, valid: Tensor) -> int:
    """Distinct 128-B segments per 32-lane group, summed. ``addr, valid: [G, 32]``."""
    seg = torch.where(valid, addr // SEGMENT_BYTES, torch.full_like(addr, -1))
    seg_sorted, _ = seg.sort(dim=1)
    new = torch.ones_like(seg_sorted, dtype=torch.bool)
    new[:, 1:] = seg_sorted[:, 1:] != seg_sorted[:, :-1]
    return int((new & (seg_sorted >= 0)).sum())


def request_efficiency(
    num_features: int,
    elem_size: int,
    layout: str,
    *,
    num_rows: int = 10000,
    generator: torch.Generator | None = None,
) -> float:
    """Useful bytes / (128 * read requests) when gathering random rows of a 128-B aligned table.

    Args:
        num_features: F, elements per row.
        elem_size: bytes per element.
        layout: one of :data:`LAYOUTS`.
        num_rows: rows gathered (random source rows, output rows 0..num_rows-1).
        generator: source-row randomness.

    Returns:
        Efficiency in (0, 1].
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if num_features <= 0 or num_rows <= 0:
        raise ValueError("num_features and num_rows must be positive")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    f, esz = num_features, elem_size
    s = f * esz
    src_rows = torch.randint(0, 1 << 20, (num_rows,), generator=gen)
    useful = num_rows * s
    if layout in ("flat", "circular"):
        o = torch.arange(num_rows * f)  # output element id
        orow, ocol = o // f, o % f
        if layout == "circular":
            diff = ((orow * s) - (src_rows[orow] * s)) % SEGMENT_BYTES
            ocol = ((ocol * esz + diff) % s) // esz
        addr = src_rows[orow] * s + ocol * esz
        pad = (-addr.numel()) % LANES
        valid = torch.ones(addr.numel() + pad, dtype=torch.bool)
        if pad:
            valid[-pad:] = False
            addr = torch.cat([addr, addr.new_zeros(pad)])
        return useful / (
            SEGMENT_BYTES * _count_requests(addr.view(-1, LANES), valid.view(-1, LANES))
        )
    starts = src_rows * s
    if layout == "row":
        ntiles = -(-f // LANES)
        cols = torch.arange(ntiles * LANES).view(1, ntiles, LANES).expand(num_rows, -1, -1)
        cols = torch.where(cols < f, cols, torch.full_like(cols, -1))
    else:
        cols = aligned_columns(starts, s, esz, SEGMENT_BYTES // esz)
        cols = cols.view(num_rows, -1, LANES)  # one warp-instruction = 32 consecutive lanes
    valid = cols >= 0
    addr = starts.view(-1, 1, 1) + cols.clamp_min(0) * esz
    return useful / (SEGMENT_BYTES * _count_requests(addr.view(-1, LANES), valid.view(-1, LANES)))
