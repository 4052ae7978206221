"""The fast path equals the autograd reference: outputs, every input gradient, final state (spec test 2, 3)."""

from __future__ import annotations

import itertools

import pytest
import torch
from ops.lact.lact_cases import assert_states_close, make_inputs, run, scalar_loss

from batchcraft.ops.lact import FastWeights, chunk_lact, lact

SHAPES = [  # B, T, H, D, Dh, C
    (1, 16, 1, 4, 8, 4),
    (2, 63, 2, 6, 12, 16),  # T not a multiple of C
    (1, 63, 1, 60, 60, 32),  # D = 60
    (2, 37, 3, 5, 10, 8),
    (1, 5, 2, 4, 4, 8),  # C > T: static SwiGLU
    (1, 1, 1, 3, 6, 4),  # one token
]


def sid(s: tuple[int, ...]) -> str:
    return "B{}-T{}-H{}-D{}-Dh{}-C{}".format(*s)


def _compare(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float64,
    use_beta: bool = False,
    linear: bool = False,
    rtol: float = 1e-9,
    atol: float = 1e-10,
    **kw: object,
) -> None:
    B, T, H, D, Dh, C = shape
    inp = make_inputs(B, T, H, D, Dh, dtype=dtype, requires_grad=True, linear=linear)
    leaves = inp.leaves(beta=use_beta)
    res = {}
    for impl in ("naive", "chunk"):
        o, st = run(impl, inp, C=C, use_beta=use_beta, **kw)
        grads = torch.autograd.grad(scalar_loss(o, st), leaves, allow_unused=True)
        res[impl] = (o, st, grads)
    (o0, s0, g0), (o1, s1, g1) = res["naive"], res["chunk"]
    torch.testing.assert_close(o1, o0, rtol=rtol, atol=atol)
    assert_states_close(s1, s0, rtol=rtol, atol=atol)
    names = ["q", "k", "v", "lr"] + (["beta"] if use_beta else [])
    names += ["down"] if linear else ["gate", "up", "down"]
    for name, a, b in zip(names, g1, g0, strict=True):
        assert (a is None) == (b is None), name
        if a is not None and b is not None:
            # gradients of long recurrences can be large: compare relative to their scale
            scale = max(float(b.abs().max()), 1.0)
            torch.testing.assert_close(
                a, b, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"d{n}: {m}"
            )


@pytest.mark.parametrize("shape", SHAPES, ids=sid)
def test_default_options(shape: tuple[int, ...]) -> None:
    _compare(shape)


@pytest.mark.parametrize(
    "shape",
    [
        SHAPES[0],
        SHAPES[3],
        pytest.param(SHAPES[1], marks=pytest.mark.slow),
        pytest.param(SHAPES[2], marks=pytest.mark.slow),
    ],
    ids=sid,
)
def test_all_on(shape: tuple[int, ...]) -> None:
    _compare(shape, use_beta=True, muon="tuned", weight_norm="pre")


OPTIONS = list(itertools.product([False, True], [None, "tuned", "classic"], ["post", "pre", None]))


@pytest.mark.parametrize(
    ("momentum", "muon", "norm"), OPTIONS, ids=[f"mom{int(m)}-{mu}-{n}" for m, mu, n in OPTIONS]
)
def test_option_grid(momentum: bool, muon: str | None, norm: str | None) -> None:
    _compare((2, 21, 2, 4, 8, 6), use_beta=momentum, muon=muon, weight_norm=norm)


@pytest.mark.parametrize("shape", SHAPES[:4], ids=sid)
def test_linear(shape: tuple[int, ...]) -> None:
    _compare(shape, linear=True, use_beta=True)


@pytest.mark.parametrize(
    "kw",
    [{"loss": "mse"}, {"inner_steps": 2}, {"schedule": "bidirectional"}],
    ids=["mse", "inner2", "bidirectional"],
)
def test_variants(kw: dict[str, object]) -> None:
    _compare((2, 19, 2, 4, 8, 5), use_beta=True, **kw)  # type: ignore[arg-type]


def test_fp32_close_to_fp64_reference() -> None:
    shape = (2, 63, 2, 8, 16, 16)
    B, T, H, D, Dh, C = shape
    inp64 = make_inputs(B, T, H, D, Dh, dtype=torch.float64)
    inp32 = make_inputs(B, T, H, D, Dh, dtype=torch.float64)
    for name in ("q", "k", "v", "lr", "beta"):
        setattr(inp32, name, getattr(inp32, name).float())
    inp32.w = FastWeights(*[t.float() for t in inp32.w])
    o64, s64 = run("naive", inp64, C=C, muon="tuned", use_beta=True)
    o32, s32 = run("chunk", inp32, C=C, muon="tuned", use_beta=True)
    torch.testing.assert_close(o32.double(), o64, rtol=1e-5, atol=1e-5)
    assert_states_close(s32.to(torch.float64), s64, rtol=1e-5, atol=1e-5)


def test_recompute_matches() -> None:
    inp = make_inputs(1, 20, 2, 6, 12, requires_grad=True)
    outs = []
    for recompute in (False, True):
        o, st = run("chunk", inp, C=4, use_beta=True, muon="classic", recompute=recompute)
        outs.append((o, torch.autograd.grad(scalar_loss(o, st), inp.leaves())))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=0, atol=0)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("muon", [None, "tuned"])
def test_gradcheck_tiny(muon: str | None) -> None:
    inp = make_inputs(1, 12, 1, 4, 8, requires_grad=True, lr_scale=0.5)

    def f(q, k, v, lr, beta, g, u, d):  # type: ignore[no-untyped-def]
        o, st = chunk_lact(q, k, v, lr, FastWeights(g, u, d), chunk_size=4, beta=beta, muon=muon)
        return o, st.weights.down

    assert torch.autograd.gradcheck(f, tuple(inp.leaves()), eps=1e-6, atol=1e-6, fast_mode=True)
    # gradients reach W0 and lr
    o, _st = f(*inp.leaves())
    gw, glr = torch.autograd.grad(o.square().sum(), [inp.w.gate, inp.lr])
    assert float(gw.abs().max()) > 0 and float(glr.abs().max()) > 0


def test_detach_cuts_cross_call_gradient() -> None:
    inp = make_inputs(1, 16, 1, 4, 8, requires_grad=True)
    _o1, st = lact(inp.q[:, :8], inp.k[:, :8], inp.v[:, :8], inp.lr[:, :8], inp.w, chunk_size=4)
    for detach, expect_zero in ((False, False), (True, True)):
        s = st.detach() if detach else st
        o2, _ = lact(inp.q[:, 8:], inp.k[:, 8:], inp.v[:, 8:], inp.lr[:, 8:], s, chunk_size=4)
        (gk,) = torch.autograd.grad(o2.sum(), [inp.k], retain_graph=True)
        assert (float(gk[:, :8].abs().max()) == 0.0) == expect_zero


@pytest.mark.parametrize(
    ("kw", "use_beta"),
    [
        ({}, False),
        ({"muon": "tuned", "weight_norm": "pre"}, True),
        ({"weight_norm": None, "muon": "classic"}, True),
    ],
    ids=["default", "mom-muon-pre", "mom-classic-nonorm"],
)
def test_inference_path_matches(kw: dict[str, object], use_beta: bool) -> None:
    """Under no_grad the fast path runs a workspace-reusing variant: same outputs and state."""
    inp = make_inputs(2, 37, 3, 6, 10)
    o, s = run("naive", inp, C=8, use_beta=use_beta, **kw)
    with torch.no_grad():
        o2, s2 = run("chunk", inp, C=8, use_beta=use_beta, **kw)
    torch.testing.assert_close(o2, o, rtol=1e-10, atol=1e-10)
    assert_states_close(s2, s, rtol=1e-10, atol=1e-10)


def test_recompute_bounds_saved_activations() -> None:
    """Per-chunk checkpointing keeps only each chunk's inputs and weights for backward."""
    inp = make_inputs(1, 64, 2, 8, 16, requires_grad=True)
    saved = {}
    for recompute in (False, True):
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run("chunk", inp, C=4, recompute=recompute)
        saved[recompute] = total
    N, L, D, Dh, n = 2, 64, 8, 16, 16
    # q, k, v, lr and the weights entering each chunk: what recompute must keep, nothing more
    minimal = 3 * N * L * D + 3 * N * L + n * 3 * N * D * Dh
    assert saved[True] < 1.25 * minimal < saved[False], saved


def test_reference_shares_no_code_with_the_fast_paths() -> None:
    """naive.py may import only the containers, the options and the validation, so that
    chunk == naive compares two independent implementations (not one shared update rule)."""
    import ast
    import inspect

    import batchcraft.ops.lact.naive as ref

    allowed = {
        "batchcraft.ops.lact.options",
        "batchcraft.ops.lact.schedule",  # TTTOp and the Schedule type only
        "batchcraft.ops.lact.state",  # FastWeights and LaCTState only
        "batchcraft.ops.lact.validate",
    }
    tree = ast.parse(inspect.getsource(ref))
    ours = {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("batchcraft")
    }
    assert ours <= allowed, ours - allowed
    names = {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module in ("batchcraft.ops.lact.schedule",
                                                          "batchcraft.ops.lact.state")
        for a in n.names
    }  # fmt: skip
    assert names <= {"Schedule", "TTTOp", "FastWeights", "LaCTState"}, names
