"""The fused chunk loop (one autograd node, hand-written backward): its pieces against autograd,
finite-difference gradients, the awkward shapes, and that the fast path really takes it."""

from __future__ import annotations

import pytest
import torch
from ops.lact.lact_cases import assert_states_close, make_inputs, run, scalar_loss

from batchcraft.ops.lact import LaCTState, chunk_lact, lact
from batchcraft.ops.lact.fused import _ns_backward, _ns_forward, _renorm, _renorm_backward
from batchcraft.ops.lact.muon import newton_schulz, ns_coefficients
from batchcraft.ops.lact.state import renorm

D64 = torch.float64


@pytest.mark.parametrize(("schedule", "steps"), [("tuned", 5), ("classic", 3), ("tuned", 0)])
@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 5, 5)], ids=["wide", "square"])
def test_newton_schulz_backward_equals_autograd(
    schedule: str, steps: int, shape: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=D64, requires_grad=True)
    x.data[0] = 0.0  # a zero matrix: NS(0) = 0 and a finite gradient
    gy = torch.randn(shape, generator=g, dtype=D64)
    coeffs = ns_coefficients(schedule, steps)
    y, saved = _ns_forward(x.detach(), coeffs)
    want = newton_schulz(x, schedule=schedule, steps=steps)
    torch.testing.assert_close(y, want.detach(), rtol=1e-13, atol=1e-13)
    (g_ref,) = torch.autograd.grad(want, [x], gy)
    got = _ns_backward(gy, saved, coeffs)
    torch.testing.assert_close(got[1:], g_ref[1:], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(got[0]).all()


def test_renorm_backward_equals_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 4, generator=g, dtype=D64, requires_grad=True)
    rho = torch.rand(2, 5, 1, generator=g, dtype=D64, requires_grad=True)
    gw = torch.randn(2, 5, 4, generator=g, dtype=D64)
    want = renorm(x, rho)
    gx_ref, grho_ref = torch.autograd.grad(want, [x, rho], gw)
    out = torch.empty_like(x)
    r, s = _renorm(x.detach(), rho.detach(), out)
    torch.testing.assert_close(out, want.detach(), rtol=1e-14, atol=1e-14)
    gx, grho = _renorm_backward(gw, x.detach(), r, s, rho.detach())
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grho, grho_ref, rtol=1e-12, atol=1e-13)


CASES = {  # weight_norm, momentum, muon
    "post-mom-tuned": ("post", True, "tuned"),
    "pre-mom": ("pre", True, None),
    "nonorm-classic": (None, False, "classic"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("dims", [(3, 5), (5, 3)], ids=["Dh>D", "Dh<D"])
def test_fused_gradcheck(case: tuple[str | None, bool, str | None], dims: tuple[int, int]) -> None:
    """Finite differences, independent of any reference implementation."""
    norm, mom, muon = case
    D, Dh = dims
    inp = make_inputs(1, 7, 2, D, Dh, requires_grad=True, lr_scale=0.5)
    leaves = inp.leaves(beta=mom)

    def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v, lr, *rest = xs
        beta = rest.pop(0) if mom else None
        o, st = chunk_lact(q, k, v, lr, type(inp.w)(*rest), chunk_size=3, beta=beta,
                           muon=muon, weight_norm=norm)  # fmt: skip
        return (o, *(t for t in st.tensors().values() if t.requires_grad))

    assert torch.autograd.gradcheck(f, tuple(leaves), atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("dims", [(6, 3), (3, 6)], ids=["Dh<D", "Dh>D"])
def test_fused_equals_reference_continuing_a_state(dims: tuple[int, int]) -> None:
    """A second call continues a momentum state with pending tokens (the fused node then gets
    momentum buffers and weights that carry a graph) and equals the reference."""
    D, Dh = dims
    inp = make_inputs(2, 23, 2, D, Dh, requires_grad=True, lr_scale=0.5)
    res = {}
    for impl in ("naive", "chunk"):
        kw = dict(chunk_size=4, muon="tuned", weight_norm="pre", impl=impl)
        o1, st = lact(inp.q[:, :6], inp.k[:, :6], inp.v[:, :6], inp.lr[:, :6], inp.w,
                      beta=inp.beta[:, :6], **kw)  # fmt: skip
        o2, st = lact(inp.q[:, 6:], inp.k[:, 6:], inp.v[:, 6:], inp.lr[:, 6:], st,
                      beta=inp.beta[:, 6:], **kw)  # fmt: skip
        o = torch.cat([o1, o2], dim=1)
        res[impl] = (o, st, torch.autograd.grad(scalar_loss(o, st), inp.leaves()))
    (o0, s0, g0), (o1, s1, g1) = res["naive"], res["chunk"]
    torch.testing.assert_close(o1, o0, rtol=1e-9, atol=1e-10)
    assert_states_close(s1, s0, rtol=1e-9, atol=1e-10)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * max(1.0, float(b.abs().max())))


def _graph_names(t: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def test_chunk_path_takes_the_fused_node_with_gradients_only() -> None:
    inp = make_inputs(1, 16, 2, 4, 4, requires_grad=True)
    o, _ = run("chunk", inp, C=4, use_beta=True)
    assert "FusedChunksBackward" in _graph_names(o)
    o, _ = run("chunk", inp, C=4, use_beta=True, loss="mse")  # not fused: the eager step
    assert "FusedChunksBackward" not in _graph_names(o)
    with torch.no_grad():
        o, st = run("chunk", inp, C=4, use_beta=True)
    assert o.grad_fn is None and isinstance(st, LaCTState)
