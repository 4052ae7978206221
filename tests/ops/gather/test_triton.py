"""The aligned Triton gather kernel under the CPU interpreter (marker ``triton``)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.triton

triton = pytest.importorskip("triton")

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from batchcraft.ops.gather import uva_gather  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]


def _table(n: int, f: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(f)
    x = (torch.randn(n, f, generator=g) * 100).to(dtype)
    return x.pin_memory() if torch.cuda.is_available() else x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("f", [1, 3, 100, 602], ids=lambda f: f"F{f}")
def test_uva_gather_bit_exact(f: int, dtype: torch.dtype) -> None:
    x = _table(40, f, dtype)
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, 40, (13,), generator=g)
    for sort in (False, True):
        for idt in (torch.int32, torch.int64):
            got = uva_gather(x, idx.to(idt), sort_indices=sort)
            assert torch.equal(got.cpu(), x[idx]), (sort, idt)


def test_uva_gather_misaligned_base_repeats_and_small_grid() -> None:
    base = _table(41, 37, torch.float32)
    x = base[1:]  # row 0 starts 148 bytes into the allocation: not 128-B aligned
    idx = torch.tensor([5, 5, 0, 39, 5, 12, 39])
    got = uva_gather(x, idx, max_programs=2, tile=64)
    assert torch.equal(got.cpu(), x[idx])


def test_uva_gather_out_empty_and_errors() -> None:
    x = _table(20, 9, torch.float32)
    out = torch.empty(3, 9)
    idx = torch.tensor([19, 0, 4])
    if not torch.cuda.is_available():
        assert uva_gather(x, idx, out=out) is out and torch.equal(out, x[idx])
    assert uva_gather(x, torch.empty(0, dtype=torch.long)).shape == (0, 9)
    with pytest.raises(IndexError):
        uva_gather(x, torch.tensor([20]))
    with pytest.raises(IndexError):
        uva_gather(x, torch.tensor([-1]))
    with pytest.raises(ValueError, match="2-D table"):
        uva_gather(x.view(-1), idx)
    with pytest.raises(ValueError, match="out must have shape"):
        uva_gather(x, idx, out=torch.empty(2, 9))
    with pytest.raises(ValueError, match="tile"):
        uva_gather(x, idx, tile=48)
    with pytest.raises(ValueError, match="max_programs"):
        uva_gather(x, idx, max_programs=0)
