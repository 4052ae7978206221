"""Reference LayerNorm / RMSNorm vs an fp64 formula and vs torch; the paper's invariances."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, rel_rms

from batchcraft.ops.norm import (
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    naive_layer_norm,
    naive_rms_norm,
    rms_norm,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ln64(x: torch.Tensor, w, b, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim written out in fp64."""
    x = x.double()
    mu = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mu) ** 2).sum(-1, keepdim=True) / x.shape[-1]
    y = (x - mu) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w.double()
    if b is not None:
        y = y + b.double()
    return y


def _leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_(True)


def _grads(fn, x, w, b, dy):
    xs = [_leaf(t) for t in (x, w, b)]
    y = fn(*xs)
    y.backward(dy)
    return [y.detach()] + [t.grad for t in xs if t is not None]


FEATS = [1, 3, 60, 1024, 4099]


@pytest.mark.parametrize("feat", FEATS, ids=[f"F{f}" for f in FEATS])
@pytest.mark.parametrize("affine", ["affine", "noaffine", "nobias"])
def test_layer_norm_matches_fp64_and_torch(feat: int, affine: str) -> None:
    g = torch.Generator().manual_seed(feat)
    x = torch.randn(5, feat, generator=g) * 3 + 1
    w = torch.randn(feat, generator=g) if affine != "noaffine" else None
    b = torch.randn(feat, generator=g) if affine == "affine" else None
    dy = torch.randn(5, feat, generator=g)
    ours = _grads(lambda x, w, b: naive_layer_norm(x, feat, w, b, 1e-5), x, w, b, dy)
    ref = _grads(lambda x, w, b: ln64(x, w, b, 1e-5), x.double(), _d(w), _d(b), dy.double())
    tor = _grads(lambda x, w, b: F.layer_norm(x, (feat,), w, b, 1e-5), x, w, b, dy)
    for o, r, t in zip(ours, ref, tor, strict=True):
        assert_close(o, r.float(), rtol=1e-4, atol=1e-4, msg="vs fp64")
        assert_close(o, t, rtol=1e-4, atol=1e-4, msg="vs torch")


def _d(t):
    return None if t is None else t.double()


def test_layer_norm_3d_and_multi_dim_shape() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=g)
    w, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    for impl in ("naive", "torch"):
        assert_close(
            layer_norm(x, (4, 5), w, b, impl=impl),
            F.layer_norm(x, (4, 5), w, b),
            rtol=1e-5,
            atol=1e-5,
            msg=impl,
        )


def test_constant_rows_give_bias_and_finite_grads() -> None:
    x = torch.full((3, 16), 2.5, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    y = naive_layer_norm(x, 16, w, b)
    assert_close(y, b.detach().expand(3, 16), rtol=0, atol=1e-6)
    y.pow(2).sum().backward()
    for t in (x, w, b):
        assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_uses_fp32_statistics(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 300, generator=g) * 10 + 100  # large mean: fp16 statistics would lose it
    w, b = torch.randn(300, generator=g), torch.randn(300, generator=g)
    ref = naive_layer_norm(x.to(dtype).float(), 300, w, b)
    y = naive_layer_norm(x.to(dtype), 300, w.to(dtype), b.to(dtype))
    assert y.dtype == dtype
    assert rel_rms(ref, y) < 1e-2
    yr = naive_rms_norm(x.to(dtype), 300, w.to(dtype))
    assert yr.dtype == dtype
    assert rel_rms(naive_rms_norm(x.to(dtype).float(), 300, w), yr) < 1e-2


@pytest.mark.parametrize("feat", [1, 60, 4099], ids=lambda f: f"F{f}")
@pytest.mark.parametrize("eps", [None, 1e-6], ids=["eps_none", "eps_1e-6"])
def test_rms_norm_matches_torch_and_fp64(feat: int, eps: float | None) -> None:
    g = torch.Generator().manual_seed(feat)
    x, w, dy = (
        torch.randn(7, feat, generator=g),
        torch.randn(feat, generator=g),
        torch.randn(7, feat, generator=g),
    )
    ours = _grads(lambda x, w, b: naive_rms_norm(x, feat, w, eps), x, w, None, dy)
    tor = _grads(lambda x, w, b: F.rms_norm(x, (feat,), w, eps), x, w, None, dy)
    e = torch.finfo(torch.float32).eps if eps is None else eps
    x64 = x.double()
    ref = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + e) * w.double()
    assert_close(ours[0], ref.float(), rtol=1e-5, atol=1e-5, msg="vs fp64")
    for o, t in zip(ours, tor, strict=True):
        assert_close(o, t, rtol=1e-4, atol=1e-4, msg="vs torch")
    assert_close(rms_norm(x, feat, w, eps, impl="torch"), ours[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fp32_res", [False, True], ids=["res_native", "res_fp32"])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("impl", ["naive", "torch"])
def test_add_norm_equals_unfused_composition(fp32_res: bool, kind: str, impl: str) -> None:
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(4, 3, 33, generator=g), torch.randn(4, 3, 33, generator=g)
    w, b = torch.randn(33, generator=g), torch.randn(33, generator=g)
    dy, ds = torch.randn(4, 3, 33, generator=g), torch.randn(4, 3, 33, generator=g)

    def run(fused: bool):
        xs = [_leaf(t) for t in (x, r, w, b)]
        if fused:
            if kind == "layernorm":
                y, s = add_layer_norm(
                    xs[0], xs[1], 33, xs[2], xs[3], residual_in_fp32=fp32_res, impl=impl
                )
            else:
                y, s = add_rms_norm(xs[0], xs[1], 33, xs[2], residual_in_fp32=fp32_res, impl=impl)
        else:
            s = xs[0] + xs[1]
            y = (
                F.layer_norm(s, (33,), xs[2], xs[3])
                if kind == "layernorm"
                else F.rms_norm(s, (33,), xs[2])
            )
        (y * dy).sum().add((s * ds).sum()).backward()
        return [y.detach(), s.detach()] + [
            t.grad if t.grad is not None else torch.zeros(()) for t in xs
        ]

    for a, e in zip(run(True), run(False), strict=True):
        assert_close(a, e, rtol=1e-5, atol=1e-5, msg=f"{kind}/{impl}")


def test_invariances_of_layer_norm() -> None:
    """Paper Table 1: invariant to re-scaling and re-centering a case; not to per-feature scaling."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 50, generator=g)
    y = naive_layer_norm(x, 50, eps=1e-12)
    assert_close(naive_layer_norm(3.7 * x, 50, eps=1e-12), y, rtol=1e-5, atol=1e-5)
    assert_close(naive_layer_norm(x + 2.5, 50, eps=1e-12), y, rtol=1e-5, atol=1e-5)
    # scaling one case of the batch leaves the others (and itself) unchanged
    x2 = x.clone()
    x2[2] *= 10.0
    assert_close(naive_layer_norm(x2, 50, eps=1e-12), y, rtol=1e-5, atol=1e-5)
    # negative case: scaling one feature (one weight row) changes the output
    x3 = x.clone()
    x3[:, 7] *= 3.0
    assert (naive_layer_norm(x3, 50, eps=1e-12) - y).abs().max() > 1e-2


@pytest.mark.parametrize("fn", ["layer_norm", "rms_norm"])
def test_errors_say_what_is_right(fn: str) -> None:
    op = layer_norm if fn == "layer_norm" else rms_norm
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="normalized_shape"):
        op(x, 7)
    with pytest.raises(ValueError, match="weight must have shape"):
        op(x, 8, torch.ones(7))
    with pytest.raises(TypeError, match="floating-point"):
        op(torch.ones(3, 8, dtype=torch.int64), 8)
    with pytest.raises(ValueError, match="impl must be one of"):
        op(x, 8, impl="cuda")
    with pytest.raises(ValueError, match="residual must have the shape"):
        add_layer_norm(x, torch.randn(3, 7), 8)
