"""PinnedFeatureStore on a CPU-only machine: every backend == x[index], lifetime, errors."""

from __future__ import annotations

import os

import pytest
import torch

from batchcraft.graph import PinnedFeatureStore, is_uva_available

CPU_ONLY = not torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _x(n: int = 60, f: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(n, f, generator=torch.Generator().manual_seed(n * f)) * 50).to(dtype)


@pytest.mark.skipif(not CPU_ONLY, reason="CPU-only selection")
def test_auto_selects_cpu_without_cuda() -> None:
    store = PinnedFeatureStore(_x())
    assert store.backend == "cpu" and store.pin == "none" and store.device.type == "cpu"
    assert is_uva_available() is False


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]
CASES = [
    pytest.param(b, d, f, id=f"{b}-{str(d).removeprefix('torch.')}-F{f}")
    for b in ("cpu", "staged")
    for d in DTYPES
    for f in (1, 3, 100, 602)
] + [  # the kernel itself is covered in tests/ops/gather/test_triton.py; here: the store glue
    pytest.param(
        "uva-triton",
        d,
        f,
        id=f"uva-triton-{str(d).removeprefix('torch.')}-F{f}",
        marks=pytest.mark.triton,
    )
    for d, f in ((torch.float32, 3), (torch.bfloat16, 100), (torch.uint8, 602))
]


@pytest.mark.parametrize(("backend", "dtype", "f"), CASES)
def test_gather_equals_index_select(backend: str, dtype: torch.dtype, f: int) -> None:
    if backend == "uva-triton" and CPU_ONLY and not INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1")
    x = _x(53, f, dtype)
    store = PinnedFeatureStore(x, backend=backend, device="cpu")
    g = torch.Generator().manual_seed(2)
    for idx in (
        torch.randint(0, 53, (17,), generator=g),
        torch.tensor([4, 4, 4, 0, 52]),
        torch.empty(0, dtype=torch.long),
        torch.arange(53, dtype=torch.int32).flip(0),
    ):
        got = store.gather(idx)
        assert got.dtype == dtype and got.shape == (idx.numel(), f)
        assert torch.equal(got, x.index_select(0, idx.long()))


@pytest.mark.parametrize("backend", ["cpu", "staged"])
def test_trailing_dims_out_and_noncontiguous(backend: str) -> None:
    x = _x(30, 24).view(30, 4, 6)
    store = PinnedFeatureStore(x, backend=backend)
    idx = torch.tensor([29, 3, 3])
    assert store.shape == (30, 4, 6) and store.dtype == torch.float32
    out = torch.empty(3, 4, 6)
    assert store.gather(idx, out=out) is out and torch.equal(out, x[idx])
    with pytest.raises(ValueError, match="out must have shape"):
        store.gather(idx, out=torch.empty(3, 24))
    xt = _x(40, 8).t()  # [8, 40] non-contiguous
    with pytest.warns(UserWarning, match="not contiguous"):
        s2 = PinnedFeatureStore(xt, backend=backend)
    assert torch.equal(s2.gather(torch.tensor([7, 0])), xt[[7, 0]])


@pytest.mark.parametrize("backend", ["cpu", "staged"])
def test_large_index(backend: str) -> None:
    x = _x(5000, 16)
    idx = torch.randint(0, 5000, (100_000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(PinnedFeatureStore(x, backend=backend).gather(idx), x[idx])


@pytest.mark.parametrize("backend", ["cpu", "staged"])
def test_bounds_and_close(backend: str) -> None:
    store = PinnedFeatureStore(_x(10, 3), backend=backend)
    for bad in ([10], [-1], [0, 99]):
        with pytest.raises(IndexError):
            store.gather(torch.tensor(bad))
    with pytest.raises(TypeError, match="int32 or int64"):
        store.gather(torch.tensor([1.0]))
    with store:
        store.gather(torch.tensor([1]))
    assert store.closed
    with pytest.raises(RuntimeError, match="closed"):
        store.gather(torch.tensor([1]))
    store.close()  # idempotent


def test_constructor_errors() -> None:
    x = _x()
    with pytest.raises(ValueError, match="pin must be one of"):
        PinnedFeatureStore(x, pin="always")
    with pytest.raises(ValueError, match="backend must be"):
        PinnedFeatureStore(x, backend="gpu")
    with pytest.raises(TypeError):
        PinnedFeatureStore([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contiguous"):
        PinnedFeatureStore(x.t(), pin="inplace")  # would pin a temporary, refused
    with pytest.raises(ValueError, match="0-D"):
        PinnedFeatureStore(torch.tensor(1.0))


@pytest.mark.skipif(not CPU_ONLY, reason="CPU-only errors")
def test_cpu_only_pinning_and_device_errors() -> None:
    x = _x()
    for pin in ("inplace", "copy"):
        with pytest.raises(ValueError, match="needs CUDA"):
            PinnedFeatureStore(x, pin=pin)
    with pytest.raises(ValueError, match="device='cpu'"):
        PinnedFeatureStore(x, backend="cpu", device="meta")
    with pytest.raises(ValueError, match="uva-view"):
        PinnedFeatureStore(x, backend="uva-view")
