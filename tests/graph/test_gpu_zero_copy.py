"""GPU checks of the zero-copy paths (spec tests 11-14; marker ``gpu``, skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from batchcraft.graph import PinnedFeatureStore

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ["uva-triton", "uva-view", "staged"]


def _x(n: int, f: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(n, f, generator=torch.Generator().manual_seed(f)) * 50).to(dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8], ids=str
)
@pytest.mark.parametrize("f", [1, 3, 100, 128, 602], ids=lambda f: f"F{f}")
@pytest.mark.parametrize("pin", ["inplace", "copy"])
def test_gpu_backends_bit_exact(backend: str, dtype: torch.dtype, f: int, pin: str) -> None:
    x = _x(3000, f, dtype)
    g = torch.Generator().manual_seed(0)
    with PinnedFeatureStore(x, pin=pin, backend=backend, sort_indices=f == 100) as store:
        assert store.device.type == "cuda" and store.backend == backend
        for idx in (
            torch.randint(0, 3000, (100_000,), generator=g),
            torch.tensor([5, 5, 5, 2999, 0]),
            torch.empty(0, dtype=torch.long),
        ):
            for dev in ("cpu", "cuda"):
                for idt in (torch.int32, torch.int64):
                    got = store.gather(idx.to(dev, idt))
                    torch.cuda.synchronize()
                    assert got.is_cuda and torch.equal(got.cpu(), x[idx])
        with pytest.raises(IndexError):
            store.gather(torch.tensor([3000], device="cuda"))


def test_auto_picks_uva_and_close_unpins() -> None:
    x = _x(1000, 64, torch.float32)
    store = PinnedFeatureStore(x)
    assert store.backend in ("uva-triton", "uva-view") and store.pin in ("inplace", "copy")
    if store.pin == "inplace":
        assert x.is_pinned()
    store.close()
    assert not x.is_pinned()
    with pytest.raises(RuntimeError, match="closed"):
        store.gather(torch.tensor([0]))


@pytest.mark.parametrize("backend", ["uva-triton", "uva-view"])
def test_zero_copy_no_device_table_and_host_writes_visible(backend: str) -> None:
    x = _x(200_000, 128, torch.float32)  # 100 MB
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    store = PinnedFeatureStore(x, pin="inplace", backend=backend)
    idx = torch.arange(0, 200_000, 1000, device="cuda")
    out = store.gather(idx)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    assert grown < 4 * out.numel() * 4 + 2**20  # output-sized, not the 100 MB table
    x[1000].fill_(7.0)  # host write after pinning, seen by the next gather (same memory)
    again = store.gather(idx)
    torch.cuda.synchronize()
    assert bool((again[1] == 7.0).all())
    store.close()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_side_stream_gathers_consumed_on_default_stream(backend: str) -> None:
    x = _x(50_000, 100, torch.float32)
    store = PinnedFeatureStore(x, backend=backend)
    side = torch.cuda.Stream()
    g = torch.Generator().manual_seed(1)
    total_gpu = torch.zeros((), dtype=torch.float64, device="cuda")
    total_ref = 0.0
    for _ in range(300):
        idx = torch.randint(0, 50_000, (4096,), generator=g)
        with torch.cuda.stream(side):
            rows = store.gather(idx.cuda(non_blocking=True), stream=side)
            ev = torch.cuda.Event()
            ev.record(side)
        torch.cuda.current_stream().wait_event(ev)
        rows.record_stream(torch.cuda.current_stream())
        total_gpu += rows.double().sum()
        total_ref += float(x[idx].double().sum())
    assert float(total_gpu) == pytest.approx(total_ref, rel=1e-9)
    store.close()


def test_triton_rejects_pageable_memory() -> None:
    from batchcraft.ops.gather import uva_gather

    x = _x(100, 16, torch.float32)  # pageable
    with pytest.raises(ValueError, match="pinned"):
        uva_gather(x, torch.tensor([1, 2], device="cuda"))
    pinned = x.pin_memory()
    assert torch.equal(uva_gather(pinned, torch.tensor([1, 2], device="cuda")).cpu(), x[[1, 2]])
