"""TTT-Linear mini-batch: dual form == primal reference (output, grads, final state)."""

from __future__ import annotations

import pytest
import torch

from batchcraft.ops.ttt_linear import ln_mse_grad, ttt_linear_minibatch


def _inputs(b, t, h, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(b, t, h, d), r(b, t, h, d), r(b, t, h, d)
    eta = torch.rand(b, t, h, generator=g, dtype=torch.float64) / d
    w0, b0 = 0.02 * r(h, d, d), 0.02 * r(h, d)
    gamma, beta = 1 + 0.1 * r(h, d), 0.1 * r(h, d)
    return [x.requires_grad_(True) for x in (q, k, v, eta, w0, b0, gamma, beta)]


@pytest.mark.parametrize(("b", "t", "h", "d", "mb"), [(1, 5, 1, 4, 16), (2, 19, 2, 6, 4), (1, 16, 1, 3, 16)],
                         ids=lambda x: str(x))  # fmt: skip
def test_dual_equals_naive(b, t, h, d, mb):
    args = _inputs(b, t, h, d)
    o1, (w1, b1) = ttt_linear_minibatch(*args, mini_batch=mb, impl="naive")
    o2, (w2, b2) = ttt_linear_minibatch(*args, mini_batch=mb, impl="dual")
    for x, y in ((o1, o2), (w1, w2), (b1, b2)):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(o1.square().sum() + w1.sum(), args)
    g2 = torch.autograd.grad(o2.square().sum() + w2.sum(), args)
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)


def test_ln_mse_grad_matches_autograd():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    tgt, gamma, beta = (torch.randn(3, 7, dtype=torch.float64, generator=g) for _ in range(3))
    y = torch.nn.functional.layer_norm(z, (7,), eps=1e-6) * gamma + beta
    (auto,) = torch.autograd.grad((y - tgt).square().sum(), z)
    torch.testing.assert_close(ln_mse_grad(z, tgt, gamma, beta), auto, rtol=1e-10, atol=1e-12)


def test_causal_within_minibatch_and_errors():
    args = [a.detach() for a in _inputs(1, 8, 1, 4)]
    o, _ = ttt_linear_minibatch(*args, mini_batch=8)
    k2 = args[1].clone()
    k2[0, 5] += 1.0
    o2, _ = ttt_linear_minibatch(args[0], k2, *args[2:], mini_batch=8)
    torch.testing.assert_close(o2[:, :5], o[:, :5], rtol=0, atol=1e-12)
    assert (o2[:, 5:] - o[:, 5:]).abs().max() > 1e-8
    with pytest.raises(ValueError, match="impl"):
        ttt_linear_minibatch(*args, impl="triton9")
    with pytest.raises(ValueError, match="eta"):
        ttt_linear_minibatch(*args[:3], args[3][:, :2], *args[4:])
