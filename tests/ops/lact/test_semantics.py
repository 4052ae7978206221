"""Semantics of the causal op (spec tests 4-7, 10-12, 14-16, 21), checked on the fast path in fp64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops.lact.lact_cases import Inputs, make_inputs, run

from batchcraft.ops.lact import FastWeights, lact, lact_inner_grad, newton_schulz, swiglu_apply
from batchcraft.ops.lact.state import NORM_EPS


def _perturbed(
    inp: Inputs, sl: slice, names: tuple[str, ...] = ("k", "v", "lr", "beta"), seed: int = 5
) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    new = Inputs(**{f: getattr(inp, f).clone() for f in ("q", "k", "v", "lr", "beta")}, w=inp.w)
    for n in names:
        t = getattr(new, n)
        t[:, sl] = torch.rand(t[:, sl].shape, generator=g, dtype=t.dtype)
    return new


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_chunk_ge_T_is_static_swiglu(impl: str) -> None:
    inp = make_inputs(2, 7, 2, 4, 8)
    o, st_ = run(impl, inp, C=7 + 3, use_beta=True, muon="tuned")
    ref = swiglu_apply(FastWeights(*[t.expand(2, *t.shape) for t in inp.w]), inp.q)  # type: ignore[union-attr]
    torch.testing.assert_close(o, ref, rtol=0, atol=1e-14)
    o2, _ = run(impl, _perturbed(inp, slice(None)), C=10, use_beta=True, muon="tuned")
    torch.testing.assert_close(o2, o, rtol=0, atol=0)
    assert st_.num_pending == 7


@pytest.mark.parametrize("r", [0, 3])
def test_tail_rule(r: int) -> None:
    C, n = 4, 3
    T = n * C + r
    inp = make_inputs(1, T, 2, 4, 8)
    o, st_ = run("chunk", inp, C=C, use_beta=True)
    # perturbing the tail's k, v, lr, beta (or the whole last chunk when r == 0) never changes an output
    last = slice(n * C, T) if r else slice((n - 1) * C, T)
    o2, _ = run("chunk", _perturbed(inp, last), C=C, use_beta=True)
    torch.testing.assert_close(o2, o, rtol=0, atol=0)
    # the state has absorbed n updates and holds r pending tokens
    assert st_.num_pending == r and st_.num_tokens == T
    _ref_o, ref_st = lact(
        inp.q[:, : n * C],
        inp.k[:, : n * C],
        inp.v[:, : n * C],
        inp.lr[:, : n * C],
        inp.w,
        chunk_size=C,
        beta=inp.beta[:, : n * C],
    )
    for a, b in zip(st_.weights, ref_st.weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@given(j=st.integers(0, 4), t_off=st.integers(0, 3), seed=st.integers(0, 100))
@settings(max_examples=12, deadline=None)
def test_causality(j: int, t_off: int, seed: int) -> None:
    C = 4
    inp = make_inputs(1, 19, 2, 4, 6, seed=seed)
    o, _ = run("chunk", inp, C=C, use_beta=True, muon="classic")
    t = min(j * C + t_off, 18)
    o2, _ = run(
        "chunk", _perturbed(inp, slice(t, None), seed=seed + 1), C=C, use_beta=True, muon="classic"
    )
    cj = (t // C) * C
    torch.testing.assert_close(
        o2[:, : cj + C], o[:, : cj + C], rtol=0, atol=0
    )  # chunk of t and before
    # a query only changes its own output
    o3, _ = run(
        "chunk", _perturbed(inp, slice(t, t + 1), names=("q",), seed=seed), C=C, use_beta=True
    )
    o4, _ = run("chunk", inp, C=C, use_beta=True)
    diff = (o3 - o4).abs().amax(dim=(0, 2, 3))
    assert (
        float(diff[:t].max() if t else 0) == 0 and float(diff[t + 1 :].max() if t < 18 else 0) == 0
    )


def test_set_semantics_inside_a_past_chunk() -> None:
    C = 6
    inp = make_inputs(2, 20, 2, 4, 8)
    o, _s = run("chunk", inp, C=C, use_beta=True, muon="tuned")
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(0)) + C  # permute chunk 1
    idx = torch.cat([torch.arange(C), perm, torch.arange(2 * C, 20)])
    p = Inputs(inp.q, inp.k[:, idx], inp.v[:, idx], inp.lr[:, idx], inp.beta[:, idx], inp.w)
    o2, _s2 = run("chunk", p, C=C, use_beta=True, muon="tuned")
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)


def test_bidirectional_equivariance() -> None:
    inp = make_inputs(1, 12, 2, 4, 8)
    o, _ = run("chunk", inp, C=12, schedule="bidirectional", use_beta=True, muon="classic")
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    p = Inputs(
        inp.q[:, perm], inp.k[:, perm], inp.v[:, perm], inp.lr[:, perm], inp.beta[:, perm], inp.w
    )
    o2, _ = run("chunk", p, C=12, schedule="bidirectional", use_beta=True, muon="classic")
    torch.testing.assert_close(o2, o[:, perm], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_row_norms(norm: str) -> None:
    inp = make_inputs(2, 8, 2, 4, 8, lr_scale=1.0)
    st0 = lact(
        inp.q[:, :1],
        inp.k[:, :1],
        inp.v[:, :1],
        inp.lr[:, :1],
        inp.w,
        chunk_size=8,
        weight_norm=norm,
    )[1]
    w0 = st0.weights
    _, s1 = run("chunk", inp, C=8, weight_norm=norm)  # exactly one update
    delta = lact_inner_grad(w0, inp.k, inp.v, inp.lr)
    for name in FastWeights._fields:
        x = getattr(w0, name) + getattr(
            delta, name
        )  # the matrix before renorm (post) / accumulator (pre)
        rho = getattr(w0, name).norm(dim=-1, keepdim=True)
        xn = x.norm(dim=-1, keepdim=True)
        got = getattr(s1.weights, name).norm(dim=-1, keepdim=True)
        torch.testing.assert_close(got, rho * xn / (xn + NORM_EPS), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(getattr(s1.row_norms, name), rho, rtol=0, atol=0)
        if norm == "pre":
            torch.testing.assert_close(getattr(s1.accum, name), x, rtol=1e-12, atol=1e-12)
            assert (
                float((x.norm(dim=-1, keepdim=True) - rho).abs().max()) > 1e-3
            )  # accumulator is not renormed


@pytest.mark.parametrize("norm", ["post", None])
def test_zero_lr(norm: str | None) -> None:
    inp = make_inputs(1, 12, 2, 4, 8)
    inp.lr.zero_()
    _, s = run("chunk", inp, C=4, weight_norm=norm)
    for w0, w1 in zip(inp.w, s.weights, strict=True):
        assert w0 is not None and w1 is not None
        rho = w0.norm(dim=-1, keepdim=True)
        expect = w0
        if norm is not None:
            for _ in range(3):  # three renorms of an otherwise unchanged matrix
                expect = expect / (expect.norm(dim=-1, keepdim=True) + NORM_EPS) * rho
        torch.testing.assert_close(w1[0], expect, rtol=1e-13, atol=1e-13)


def test_momentum_closed_form() -> None:
    C, n = 4, 4
    inp = make_inputs(1, n * C, 2, 4, 8, lr_scale=0.3)
    # beta == 0 is plain gradient descent
    z = Inputs(inp.q, inp.k, inp.v, inp.lr, torch.zeros_like(inp.beta), inp.w)
    torch.testing.assert_close(
        run("chunk", z, C=C, use_beta=True)[0], run("chunk", inp, C=C)[0], rtol=0, atol=1e-14
    )
    # a single update is unaffected by momentum
    one = slice(0, C)
    a = lact(
        inp.q[:, one],
        inp.k[:, one],
        inp.v[:, one],
        inp.lr[:, one],
        inp.w,
        chunk_size=C,
        beta=inp.beta[:, one],
    )
    b = lact(inp.q[:, one], inp.k[:, one], inp.v[:, one], inp.lr[:, one], inp.w, chunk_size=C)
    for x, y in zip(a[1].weights, b[1].weights, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # buffer after chunk j == sum_i (prod_{l=i+1..j} mu_l) Delta_i (no norm, no Muon)
    state = FastWeights(*inp.w)
    deltas, mus = [], []
    for j in range(n):
        s = slice(j * C, (j + 1) * C)
        w_used = state.weights if j else FastWeights(*[t.expand(1, *t.shape) for t in inp.w])  # type: ignore[union-attr]
        deltas.append(lact_inner_grad(w_used, inp.k[:, s], inp.v[:, s], inp.lr[:, s]))
        mus.append(inp.beta[:, s].mean(dim=1)[..., None, None])  # [B, H, 1, 1]
        _, state = lact(
            inp.q[:, s],
            inp.k[:, s],
            inp.v[:, s],
            inp.lr[:, s],
            state,
            chunk_size=C,
            beta=inp.beta[:, s],
            weight_norm=None,
        )
        for m, name in enumerate(FastWeights._fields):
            expect = sum(
                torch.stack(mus[i + 1 : j + 1]).prod(0) * getattr(deltas[i], name)
                if i < j
                else getattr(deltas[i], name)
                for i in range(j + 1)
            )
            torch.testing.assert_close(
                getattr(state.momentum, name), expect, rtol=1e-12, atol=1e-12
            )
            del m


@pytest.mark.parametrize("muon", [None, "tuned"])
def test_lr_scale_invariance_with_muon(muon: str | None) -> None:
    # exact up to the NS eps (1e-7 / ||Delta||_F, amplified by the NS slope near 0): keep Delta O(1)
    inp = make_inputs(1, 20, 2, 4, 8, lr_scale=3.0)
    o, _ = run("chunk", inp, C=4, muon=muon, use_beta=True)
    scaled = Inputs(inp.q, inp.k, inp.v, inp.lr * 7.0, inp.beta, inp.w)
    o2, _ = run("chunk", scaled, C=4, muon=muon, use_beta=True)
    rel = float((o2 - o).norm() / o.norm())
    assert (rel < 1e-6) if muon else (rel > 1e-3)


def test_linear_limit_is_chunk_shifted_linear_attention() -> None:
    C, T = 4, 14
    inp = make_inputs(2, T, 2, 5, 5, linear=True)
    o, _ = run("chunk", inp, C=C, weight_norm=None)
    w0 = inp.w.down  # [H, D, D]
    for t in range(T):
        past = slice(0, C * (t // C))
        upd = torch.einsum(
            "bsh,bshi,bshj->bhij", inp.lr[:, past, :, 2], inp.v[:, past], inp.k[:, past]
        )
        ref = torch.einsum("bhij,bhj->bhi", w0 + upd, inp.q[:, t])
        torch.testing.assert_close(o[:, t], ref, rtol=1e-12, atol=1e-12)


def test_head_and_batch_independence() -> None:
    inp = make_inputs(2, 11, 3, 4, 8, batch_weights=True)
    o, _ = run("chunk", inp, C=4, use_beta=True, muon="tuned", weight_norm="pre")
    for b in range(2):
        for h in range(3):
            sl = (slice(b, b + 1), slice(None), slice(h, h + 1))
            one = Inputs(
                inp.q[sl],
                inp.k[sl],
                inp.v[sl],
                inp.lr[sl],
                inp.beta[sl],
                FastWeights(*[t[b : b + 1, h : h + 1] for t in inp.w]),
            )  # type: ignore[index]
            o1, _ = run("chunk", one, C=4, use_beta=True, muon="tuned", weight_norm="pre")
            torch.testing.assert_close(o1[:, :, 0], o[b : b + 1, :, h], rtol=1e-13, atol=1e-13)


def test_muon_update_keeps_initial_weights() -> None:
    """Regression for the official bidirectional bug (spec §10.1): W1 = W0 + NS(Delta), not NS(Delta)."""
    inp = make_inputs(1, 8, 1, 4, 8)
    _, s = run("chunk", inp, C=8, muon="classic", weight_norm=None)
    w0 = FastWeights(*[t.expand(1, *t.shape) for t in inp.w])  # type: ignore[union-attr]
    delta = lact_inner_grad(w0, inp.k, inp.v, inp.lr)
    for name in FastWeights._fields:
        expect = getattr(w0, name) + newton_schulz(getattr(delta, name), schedule="classic")
        torch.testing.assert_close(getattr(s.weights, name), expect, rtol=1e-12, atol=1e-12)
