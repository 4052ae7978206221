"""Triton LayerNorm / RMSNorm kernels == the reference (CPU: TRITON_INTERPRET=1, small sizes)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, rel_rms

from batchcraft import _capabilities as caps
from batchcraft.ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        not caps.has_triton() or not (caps.triton_interpret() or torch.cuda.is_available()),
        reason="needs triton with CUDA or TRITON_INTERPRET=1",
    ),
]
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _leaves(*ts: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


def _run(kind: str, impl: str, x, r, w, b, dy, ds, fp32_res: bool = False):
    xs = _leaves(x, r, w, b)
    s = None
    if kind == "ln":
        y = layer_norm(xs[0], x.shape[-1], xs[2], xs[3], impl=impl)
    elif kind == "rms":
        y = rms_norm(xs[0], x.shape[-1], xs[2], impl=impl)
    elif kind == "add_ln":
        y, s = add_layer_norm(
            xs[0], xs[1], x.shape[-1], xs[2], xs[3], residual_in_fp32=fp32_res, impl=impl
        )
    else:
        y, s = add_rms_norm(xs[0], xs[1], x.shape[-1], xs[2], residual_in_fp32=fp32_res, impl=impl)
    loss = (y.float() * dy).sum() + ((s.float() * ds).sum() if s is not None else 0)
    loss.backward()
    out = [y.detach()] + ([s.detach()] if s is not None else [])
    return out + [t.grad for t in xs if t is not None and t.grad is not None]


CASES = [(1, 1), (5, 3), (7, 60), (3, 1000), (2, 4099)]


@pytest.mark.parametrize("n,feat", CASES, ids=[f"N{n}xF{f}" for n, f in CASES])
@pytest.mark.parametrize("kind", ["ln", "rms", "add_ln", "add_rms"])
def test_triton_matches_reference_fp32(n: int, feat: int, kind: str) -> None:
    g = torch.Generator().manual_seed(n * 7 + feat)
    x, r = torch.randn(n, feat, generator=g) * 2 + 0.5, torch.randn(n, feat, generator=g)
    w, b = torch.randn(feat, generator=g), torch.randn(feat, generator=g)
    dy, ds = torch.randn(n, feat, generator=g), torch.randn(n, feat, generator=g)
    args = [t.to(DEV) for t in (x, r, w, b, dy, ds)]
    ours = _run(kind, "triton", *args)
    ref = _run(kind, "naive", *args)
    assert len(ours) == len(ref)
    for i, (a, e) in enumerate(zip(ours, ref, strict=True)):
        assert_close(a, e, rtol=1e-4, atol=1e-4, msg=f"{kind} output/grad #{i}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["ln", "rms", "add_ln"])
def test_triton_low_precision(dtype: torch.dtype, kind: str) -> None:
    g = torch.Generator().manual_seed(5)
    n, feat = 9, 130
    x, r = torch.randn(n, feat, generator=g) * 4 + 3, torch.randn(n, feat, generator=g)
    w, b = torch.randn(feat, generator=g), torch.randn(feat, generator=g)
    dy, ds = torch.randn(n, feat, generator=g), torch.randn(n, feat, generator=g)
    low = [t.to(DEV, dtype) for t in (x, r, w, b)]
    ours = _run(kind, "triton", *low, dy.to(DEV), ds.to(DEV), fp32_res=True)
    ref = _run(kind, "naive", *[t.float() for t in low], dy.to(DEV), ds.to(DEV), fp32_res=True)
    assert ours[0].dtype == dtype
    if kind == "add_ln":
        assert ours[1].dtype == torch.float32  # residual_in_fp32 keeps the sum in fp32
    for i, (a, e) in enumerate(zip(ours, ref, strict=True)):
        assert rel_rms(e, a) < 1e-2, f"{kind} #{i}: {rel_rms(e, a)}"


def test_triton_3d_no_affine_and_constant_rows() -> None:
    x = torch.randn(2, 5, 24).to(DEV)
    x[1, 2] = 3.0  # a constant row normalises to the bias
    b = torch.randn(24).to(DEV)
    y = layer_norm(x, 24, None, b, impl="triton")
    assert_close(y, layer_norm(x, 24, None, b, impl="naive"), rtol=1e-5, atol=1e-5)
    assert_close(y[1, 2], b, rtol=0, atol=1e-6)


def test_triton_rejects_too_wide_rows() -> None:
    from batchcraft.ops.norm.triton import MAX_FEATURES, triton_norm

    with pytest.raises(ValueError, match='impl="torch"'):
        triton_norm(torch.randn(1, MAX_FEATURES + 1), None, None, 1e-5, is_rms=False)
