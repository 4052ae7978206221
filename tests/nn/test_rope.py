"""RoPE: cached range tables equal the direct tables, the hand-written rotation backward equals
autograd of the formula, the q/k pair rotation equals two single rotations."""

from __future__ import annotations

import pytest
import torch

from batchcraft.nn.rope import (
    apply_rope,
    apply_rope_pair,
    rope_cos_sin,
    rope_tables,
)

D64 = torch.float64


def _formula(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, autograd all the way."""
    cos, sin = rope_cos_sin(pos, x.shape[-1], theta=theta, dtype=x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[None, :, None] + torch.cat([-x2, x1], dim=-1) * sin[None, :, None]


@pytest.mark.parametrize(("start", "length"), [(0, 5), (3, 9), (1000, 40), (70000, 3)])
def test_range_tables_equal_direct_tables(start: int, length: int) -> None:
    tab = rope_tables(range(start, start + length), 6, theta=100.0, dtype=D64)
    cos, sin = rope_cos_sin(torch.arange(start, start + length), 6, theta=100.0, dtype=D64)
    assert torch.equal(tab.cos, cos)
    assert torch.equal(tab.sin_signed, torch.cat([-sin[:, :3], sin[:, 3:]], dim=-1))


def test_cached_tables_made_in_inference_mode_do_not_leak_into_training() -> None:
    x = torch.randn(1, 6, 2, 4, dtype=D64, requires_grad=True)
    with torch.inference_mode():
        apply_rope(torch.randn(1, 6, 2, 4, dtype=D64), range(6))
    y = apply_rope(x, range(6))  # would raise if an inference-mode table were saved for backward
    (g,) = torch.autograd.grad(y.sum(), [x])
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("positions", ["range", "tensor", "batch"])
def test_rotation_and_its_backward_equal_the_formula(positions: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, 8, generator=g, dtype=D64, requires_grad=True)
    pos = torch.arange(2, 9)
    arg: torch.Tensor | range = range(2, 9) if positions == "range" else pos
    if positions == "batch":
        arg = torch.stack([pos, pos + 5])
        want = torch.cat([_formula(x[:1], pos, 50.0), _formula(x[1:], pos + 5, 50.0)])
    else:
        want = _formula(x, pos, 50.0)
    got = apply_rope(x, arg, theta=50.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gy = torch.randn(got.shape, generator=g, dtype=D64)
    (ga,) = torch.autograd.grad(got, [x], gy)
    (gb,) = torch.autograd.grad(want, [x], gy)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, arg, theta=50.0), (x,))


def test_pair_rotation_equals_two_rotations() -> None:
    g = torch.Generator().manual_seed(1)
    qk = torch.randn(2, 5, 2, 3, 4, generator=g, dtype=D64, requires_grad=True)
    q, k = apply_rope_pair(qk, range(1, 6), theta=10.0)
    q2, k2 = (apply_rope(qk[:, :, i], range(1, 6), theta=10.0) for i in (0, 1))
    torch.testing.assert_close(q, q2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, k2, rtol=1e-12, atol=1e-12)
    gq = torch.randn(q.shape, generator=g, dtype=D64)
    (a,) = torch.autograd.grad(q, [qk], gq)  # only q used: k's gradient is zero
    (b,) = torch.autograd.grad(q2, [qk], gq)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: apply_rope_pair(t, range(1, 6), theta=10.0), (qk,))


def test_rope_input_errors() -> None:
    with pytest.raises(ValueError, match="tables"):
        apply_rope(torch.randn(1, 4, 1, 6), range(4), tables=rope_tables(range(4), 4))
    with pytest.raises(ValueError, match=r"\[B, T, 2, H, D\]"):
        apply_rope_pair(torch.randn(1, 4, 3, 1, 6), range(4))
    with pytest.raises(ValueError, match="range"):
        rope_tables(range(0, 8, 2), 4)


def test_fake_tensor_traces_neither_poison_nor_read_the_table_cache():
    """The memory planner traces under FakeTensorMode: tables made there must not be cached for
    later real calls, and cached real tables must not leak into a trace."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from batchcraft.nn.rope import rope_tables

    real = rope_tables(range(5), 8, theta=123.0)  # cached
    with FakeTensorMode():
        fake = rope_tables(range(5), 8, theta=123.0)
        fake2 = rope_tables(range(7), 8, theta=321.0)
    assert isinstance(fake.cos, FakeTensor) and isinstance(fake2.cos, FakeTensor)
    again = rope_tables(range(7), 8, theta=321.0)
    assert not isinstance(again.cos, FakeTensor)
    assert not isinstance(rope_tables(range(5), 8, theta=123.0).cos, FakeTensor)
    assert real.cos.shape == (5, 8)


def test_table_cache_off_computes_the_same_tables_per_call():
    from batchcraft.nn.rope import rope_tables, table_cache

    on = rope_tables(range(3, 40), 16)
    with table_cache(False):
        off = rope_tables(range(3, 40), 16)
    assert off.cos.untyped_storage().nbytes() < on.cos.untyped_storage().nbytes()  # own table
    torch.testing.assert_close(off.cos, on.cos, rtol=0, atol=0)
    torch.testing.assert_close(off.sin_signed, on.sin_signed, rtol=0, atol=0)
