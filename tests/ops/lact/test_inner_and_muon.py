"""Closed-form inner gradient == autograd of L_m (spec test 1); Newton-Schulz properties (test 13)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops.lact.lact_cases import make_inputs

from batchcraft.ops.lact import FastWeights, lact_inner_grad, newton_schulz, swiglu_apply


def _loss(w: FastWeights, inp, m: int, loss: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    f = (
        swiglu_apply(w, inp.k)
        if w.gate is not None
        else torch.einsum("bhij,bthj->bthi", w.down, inp.k)
    )
    lam = inp.lr[..., m]
    if loss == "mse":
        return (lam * 0.5 * (f - inp.v).square().sum(-1)).sum()
    return -(lam * (f * inp.v).sum(-1)).sum()


@pytest.mark.parametrize("linear", [False, True], ids=["swiglu", "linear"])
@pytest.mark.parametrize("loss", ["neg_dot", "mse"])
def test_inner_grad_equals_autograd(linear: bool, loss: str) -> None:
    inp = make_inputs(2, 9, 3, 5, 7, linear=linear, batch_weights=True)
    delta = lact_inner_grad(
        inp.w, inp.k, inp.v, inp.lr, "linear" if linear else "swiglu", loss=loss
    )
    for m, name in enumerate(FastWeights._fields):
        if getattr(inp.w, name) is None:
            assert getattr(delta, name) is None
            continue
        if linear and name == "down":
            m = 2
        wm = getattr(inp.w, name).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_loss(inp.w._replace(**{name: wm}), inp, m, loss), [wm])
        torch.testing.assert_close(getattr(delta, name), -g, rtol=0, atol=1e-10)


def test_swiglu_apply_matches_per_head_loop() -> None:
    inp = make_inputs(2, 5, 3, 4, 6, batch_weights=True)
    out = swiglu_apply(inp.w, inp.q)
    assert inp.w.gate is not None and inp.w.up is not None
    for b in range(2):
        for h in range(3):
            x = inp.q[b, :, h]  # [T, D]
            ref = (
                torch.nn.functional.silu(x @ inp.w.gate[b, h].T) * (x @ inp.w.up[b, h].T)
            ) @ inp.w.down[b, h].T
            torch.testing.assert_close(out[b, :, h], ref, rtol=0, atol=1e-13)


def _rand(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(3, m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("schedule", ["tuned", "classic"])
@pytest.mark.parametrize(("m", "n"), [(6, 6), (4, 9), (9, 4)])
def test_ns_keeps_singular_vectors_and_transposes(schedule: str, m: int, n: int) -> None:
    g = _rand(m, n, 0)
    x = newton_schulz(g, schedule=schedule)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.mT @ x @ vh.mT  # diagonal when singular vectors are kept
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert float(off.abs().max()) < 1e-10
    torch.testing.assert_close(newton_schulz(g.mT, schedule=schedule), x.mT, rtol=0, atol=1e-12)


@given(c=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
@settings(max_examples=20, deadline=None)
def test_ns_scale_invariant(c: float, seed: int) -> None:
    g = _rand(5, 8, seed)
    # exact once the eps scales with G; with the fixed eps, up to eps / ||cG||_F
    torch.testing.assert_close(
        newton_schulz(c * g, eps=c * 1e-7), newton_schulz(g), rtol=1e-9, atol=1e-9
    )
    if c >= 0.1:
        torch.testing.assert_close(newton_schulz(c * g), newton_schulz(g), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("schedule", "lo", "hi"), [("tuned", 0.978, 1.032), ("classic", 0.682, 1.134)]
)
def test_ns_singular_values_in_band(schedule: str, lo: float, hi: float) -> None:
    # singular values with sigma / ||G||_F spread over [0.01, 1]
    n = 16
    q1, _ = torch.linalg.qr(_rand(n, n, 1)[0])
    q2, _ = torch.linalg.qr(_rand(n, n, 2)[0])
    ratios = torch.logspace(-2, 0, n, dtype=torch.float64)
    s = ratios / ratios.norm() * 0.999  # sigma_i / ||G||_F; the largest is ~ 1 / ||ratios||
    for target_max in (0.01, 0.3, 1.0):  # put the largest ratio anywhere in the band
        sv = s / s.max() * target_max
        sv = torch.clamp(sv, min=0.01)
        # choose ||G||_F so that sigma/||G||_F == sv: G = Q1 diag(sv * F) Q2 with F = 1 / ||sv|| when ||sv|| <= 1
        if float(sv.norm()) > 1:
            continue
        g = q1 @ torch.diag(sv) @ q2  # ||G||_F = ||sv|| <= 1: sigma/||G||_F = sv / ||sv|| >= sv
        out = torch.linalg.svdvals(newton_schulz(g, schedule=schedule))
        assert float(out.min()) >= lo and float(out.max()) <= hi, (schedule, out.min(), out.max())


def test_ns_zero_steps_is_frobenius_normalisation() -> None:
    g = _rand(4, 7, 3)
    for schedule in ("tuned", "classic"):
        out = newton_schulz(g, schedule=schedule, steps=0)
        ref = g / (torch.linalg.matrix_norm(g, keepdim=True) + 1e-7)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_ns_bad_arguments() -> None:
    g = _rand(3, 3, 0)
    with pytest.raises(ValueError, match="tuned"):
        newton_schulz(g, schedule="tuned", steps=6)
    with pytest.raises(ValueError, match="'tuned' or 'classic'"):
        newton_schulz(g, schedule="polar")
    with pytest.raises(ValueError, match="m, n"):
        newton_schulz(torch.ones(3))
