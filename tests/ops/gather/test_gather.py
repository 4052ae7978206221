"""Reference, staged and dispatcher gathers == x.index_select(0, index), bit for bit."""

from __future__ import annotations

import pytest
import torch

from batchcraft.ops.gather import (
    StagedGatherer,
    aligned_columns,
    gather_rows,
    naive_gather,
    request_efficiency,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]
FEATS = [1, 3, 100, 128, 602]


def _table(n: int, f: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, f, generator=g) * 100).to(dtype)


def _index(kind: str, n: int, b: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "empty":
        return torch.empty(0, dtype=dtype)
    if kind == "repeated":
        return torch.randint(0, 3, (b,), generator=g).to(dtype)
    idx = torch.randint(0, n, (b,), generator=g)
    return (idx.sort().values if kind == "sorted" else idx).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("f", FEATS, ids=lambda f: f"F{f}")
@pytest.mark.parametrize("impl", ["naive", "staged"])
def test_gather_rows_bit_exact(impl: str, f: int, dtype: torch.dtype) -> None:
    x = _table(97, f, dtype)
    for kind in ("unsorted", "sorted", "repeated", "empty"):
        for idt in (torch.int32, torch.int64):
            idx = _index(kind, 97, 41, idt)
            got = gather_rows(x, idx, impl=impl)
            assert got.dtype == x.dtype and got.shape == (idx.numel(), f)
            assert torch.equal(got, x.index_select(0, idx)), (kind, idt)


@pytest.mark.parametrize("impl", ["naive", "staged"])
def test_large_index_and_noncontiguous(impl: str) -> None:
    x = _table(1000, 64, torch.float32)[:, ::2]  # non-contiguous
    idx = torch.randint(0, 1000, (100_000,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(gather_rows(x, idx, impl=impl), x[idx])


def test_naive_keeps_trailing_dims() -> None:
    x = _table(10, 12, torch.float32).view(10, 3, 4)
    idx = torch.tensor([9, 0, 9])
    assert torch.equal(naive_gather(x, idx), x[idx])


@pytest.mark.parametrize("impl", ["naive", "staged", "auto"])
@pytest.mark.parametrize("bad", [[-1], [10], [0, 11]], ids=["neg", "N", "N+1"])
def test_out_of_range_raises(impl: str, bad: list[int]) -> None:
    x = _table(10, 4, torch.float32)
    with pytest.raises(IndexError, match="row ids"):
        gather_rows(x, torch.tensor(bad), impl=impl)


def test_index_type_errors() -> None:
    x = _table(10, 4, torch.float32)
    with pytest.raises(TypeError, match="int32 or int64"):
        naive_gather(x, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="1-D"):
        naive_gather(x, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="impl must be one of"):
        gather_rows(x, torch.tensor([0]), impl="fast")


def test_staged_ring_order_and_reuse() -> None:
    """Across >= 3 batches through a 2-buffer ring, every output keeps its own contents."""
    x = _table(500, 33, torch.float32)
    s = StagedGatherer(x, "cpu", staging_rows=8, num_buffers=2)
    g = torch.Generator().manual_seed(5)
    idxs = [torch.randint(0, 500, (n,), generator=g) for n in (5, 40, 17, 3, 60)]
    outs = [s.gather(i) for i in idxs]  # hold every result; the ring must not alias them
    for i, o in zip(idxs, outs, strict=True):
        assert torch.equal(o, x[i])
    assert not s.pin  # no CUDA: staging buffers are plain memory


def test_staged_out_argument() -> None:
    x = _table(50, 7, torch.float16)
    s = StagedGatherer(x, "cpu")
    out = torch.empty(4, 7, dtype=torch.float16)
    idx = torch.tensor([3, 1, 3, 49])
    assert s.gather(idx, out=out) is out and torch.equal(out, x[idx])
    with pytest.raises(ValueError, match="out must have shape"):
        s.gather(idx, out=torch.empty(3, 7, dtype=torch.float16))
    with pytest.raises(ValueError, match="2-D CPU table"):
        StagedGatherer(x.view(-1), "cpu")


# ---------------------------------------------------------------- alignment model (spec 2.3)


@pytest.mark.parametrize("esz", [1, 2, 4, 8])
@pytest.mark.parametrize("f", [1, 3, 100, 602], ids=lambda f: f"F{f}")
def test_aligned_columns_bijection_and_segments(f: int, esz: int) -> None:
    g = torch.Generator().manual_seed(f * esz)
    starts = torch.randint(0, 1 << 16, (64,), generator=g) * esz
    seg = 128 // esz
    cols = aligned_columns(starts, f * esz, esz, tile=2 * seg)
    for r in range(starts.numel()):
        c = cols[r][cols[r] >= 0]
        assert torch.equal(c.sort().values, torch.arange(f)), "not a bijection onto the row"
    # every group of 128/esz consecutive lanes reads inside one aligned 128-byte segment
    lanes = cols.view(starts.numel(), -1, seg)
    addr = starts.view(-1, 1, 1) + lanes * esz
    segs = torch.where(lanes >= 0, addr // 128, torch.full_like(addr, -1))
    for r in range(starts.numel()):
        for grp in segs[r]:
            v = grp[grp >= 0]
            assert v.numel() == 0 or bool((v == v[0]).all())


def test_aligned_columns_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 128/elem_size"):
        aligned_columns(torch.tensor([0]), 400, 4, tile=48)
    with pytest.raises(ValueError, match="elem_size"):
        aligned_columns(torch.tensor([0]), 400, 3, tile=32)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (100, {"flat": 0.47, "circular": 0.61, "row": 0.47, "row_aligned": 0.78}),
        (128, {"flat": 1.00, "circular": 1.00, "row": 1.00, "row_aligned": 1.00}),
        (602, {"flat": 0.50, "circular": 0.89, "row": 0.51, "row_aligned": 0.95}),
    ],
    ids=["F100", "F128", "F602"],
)
def test_request_efficiency_matches_spec_table(f: int, expected: dict[str, float]) -> None:
    for layout, want in expected.items():
        gen = torch.Generator().manual_seed(0)
        got = request_efficiency(f, 4, layout, num_rows=3000, generator=gen)
        assert abs(got - want) <= 0.03, (layout, got, want)


def test_row_aligned_beats_flat_at_602() -> None:
    ra = request_efficiency(602, 4, "row_aligned", num_rows=2000)
    fl = request_efficiency(602, 4, "flat", num_rows=2000)
    assert ra >= 1.7 * fl
    with pytest.raises(ValueError, match="layout must be one of"):
        request_efficiency(100, 4, "diagonal")
