"""The fused layer nodes equal their plain-autograd references (values and every gradient)."""

from __future__ import annotations

import pytest
import torch

from batchcraft.nn.rope import rope_tables
from batchcraft.ops.lact.layer_ops import (
    ttt_output,
    ttt_output_reference,
    ttt_qk_prep,
    ttt_qk_prep_reference,
)

D64 = torch.float64


def _grads(
    out: tuple[torch.Tensor, ...], leaves: list[torch.Tensor], seed: int
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
    return list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize(("heads", "rope_heads"), [(2, 4), (2, None), (1, 1), (3, 6)])
@pytest.mark.parametrize("which", ["both", "q_only"])
def test_qk_prep_equals_reference(heads: int, rope_heads: int | None, which: str) -> None:
    g = torch.Generator().manual_seed(0)
    B, T, d = 2, 5, 12 * heads
    qkv = torch.randn(B, T, 3 * d, generator=g, dtype=D64, requires_grad=True)
    x = qkv.unflatten(-1, (3, d))[:, :, :2]  # a strided view, as the layer passes it
    scale = (1 + 0.3 * torch.randn(2, d, generator=g, dtype=D64)).requires_grad_(True)
    offset = (0.2 * torch.randn(2, d, generator=g, dtype=D64)).requires_grad_(True)
    rope = None if rope_heads is None else rope_tables(range(3, 3 + T), d // rope_heads, dtype=D64)
    kw = dict(heads=heads, rope=rope, rope_heads=rope_heads)
    got = ttt_qk_prep(x, scale, offset, **kw)
    want = ttt_qk_prep_reference(x, scale, offset, **kw)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    pick = (lambda o: o) if which == "both" else (lambda o: o[:1])
    leaves = [qkv, scale, offset]
    for a, b in zip(_grads(pick(got), leaves, 1), _grads(pick(want), leaves, 1), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_qk_prep_gradcheck_and_zero_rows() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 2, 8, generator=g, dtype=D64, requires_grad=True)
    scale = torch.randn(2, 8, generator=g, dtype=D64, requires_grad=True)
    offset = torch.randn(2, 8, generator=g, dtype=D64, requires_grad=True)
    rope = rope_tables(range(3), 4, dtype=D64)

    def f(a: torch.Tensor, s: torch.Tensor, o: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ttt_qk_prep(a, s, o, heads=2, rope=rope, rope_heads=2)

    assert torch.autograd.gradcheck(f, (x, scale, offset))
    # silu(0) = 0: an all-zero head gives a zero output and finite (zero-norm) gradients
    z = torch.zeros(1, 2, 2, 8, dtype=D64, requires_grad=True)
    q, k = ttt_qk_prep(z, torch.ones(2, 8, dtype=D64), torch.zeros(2, 8, dtype=D64), heads=2)
    (gz,) = torch.autograd.grad((q + k).sum(), [z])
    assert torch.equal(q, torch.zeros_like(q)) and torch.isfinite(gz).all()


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("att", [True, False])
def test_output_equals_reference(gate: bool, att: bool) -> None:
    g = torch.Generator().manual_seed(4)
    B, T, H, D = 2, 6, 3, 5
    base = torch.randn(B, H, T, D, generator=g, dtype=D64, requires_grad=True)
    o = base.permute(0, 2, 1, 3)  # strided, like the op's folded output
    w = torch.randn(D, generator=g, dtype=D64, requires_grad=True)
    gt = torch.randn(B, T, H, generator=g, dtype=D64, requires_grad=True) if gate else None
    oa = torch.randn(B, T, H * D, generator=g, dtype=D64, requires_grad=True) if att else None
    got = ttt_output(o, w, gt, oa)
    want = ttt_output_reference(o, w, gt, oa)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    leaves = [t for t in (base, w, gt, oa) if t is not None]
    for a, b in zip(_grads((got,), leaves, 5), _grads((want,), leaves, 5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: ttt_output(t[0].permute(0, 2, 1, 3), *t[1:]),
                                    (base, w, gt, oa))  # fmt: skip


def test_layer_ops_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\[B, T, 2, d\]"):
        ttt_qk_prep(torch.randn(1, 2, 3, 8), torch.ones(2, 8), torch.zeros(2, 8), heads=2)
    with pytest.raises(ValueError, match="rope_heads"):
        ttt_qk_prep(torch.randn(1, 2, 2, 8), torch.ones(2, 8), torch.zeros(2, 8), heads=2,
                    rope=rope_tables(range(2), 2), rope_heads=3)  # fmt: skip
    with pytest.raises(ValueError, match="weight"):
        ttt_output(torch.randn(1, 2, 2, 4), torch.ones(3), None, None)
