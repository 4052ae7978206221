"""Triton LaCT kernels and the recomputing autograd Function against the PyTorch reference.

Without CUDA these run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest), so
sizes are tiny but awkward (D and Dh not powers of two, S not a multiple of the tile, a chunk
slice of a longer tensor). ``gpu`` tests repeat the op-level check in bf16 on CUDA (spec test 22).
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_rms
from ops.lact.lact_cases import assert_states_close, make_inputs, run, scalar_loss

from batchcraft.ops.lact import FastWeights, chunk_lact, naive_lact, resolve_impl
from batchcraft.ops.lact.inner import apply_rows, inner_grad_rows
from batchcraft.ops.lact.state import renorm

pytest.importorskip("triton")
tk = pytest.importorskip("batchcraft.ops.lact.triton_kernels")
tri = pytest.importorskip("batchcraft.ops.lact.triton")

pytestmark = pytest.mark.triton


def _weights(N: int, D: int, Dh: int, g: torch.Generator) -> FastWeights:
    return FastWeights(
        torch.randn(N, Dh, D, generator=g) / D**0.5,
        torch.randn(N, Dh, D, generator=g) / D**0.5,
        torch.randn(N, D, Dh, generator=g) / Dh**0.5,
    )


SIZES = [(2, 37, 20, 44), (1, 5, 3, 17), (3, 70, 33, 16)]  # (N, S, D, Dh)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "N{}-S{}-D{}-Dh{}".format(*s))
def test_swiglu_apply_kernel_equals_reference(size: tuple[int, int, int, int]) -> None:
    N, S, D, Dh = size
    g = torch.Generator().manual_seed(0)
    w = _weights(N, D, Dh, g)
    x = torch.randn(N, S + 7, D, generator=g)[:, 3 : 3 + S]  # a chunk slice: batch stride != S*D
    o = tk.swiglu_apply(*w, x)
    torch.testing.assert_close(o, apply_rows(w, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "N{}-S{}-D{}-Dh{}".format(*s))
def test_inner_grad_kernel_equals_closed_form(size: tuple[int, int, int, int]) -> None:
    N, S, D, Dh = size
    g = torch.Generator().manual_seed(1)
    w = _weights(N, D, Dh, g)
    k, v = torch.randn(N, S, D, generator=g), torch.randn(N, S, D, generator=g)
    lr = torch.rand(N, S, 3, generator=g)
    got = tk.inner_grad(*w, k, v, lr)
    ref = inner_grad_rows(w, k, v, lr)
    for name, a, b in zip(("gate", "up", "down"), got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_kernels_bf16_operands_match_bf16_rounded_reference() -> None:
    """mm_bf16 rounds dot operands to bf16 with fp32 accumulation; differs from fp32 like bf16 does."""
    N, S, D, Dh = 2, 24, 16, 32
    g = torch.Generator().manual_seed(2)
    w = _weights(N, D, Dh, g)
    x = torch.randn(N, S, D, generator=g)
    exact = apply_rows(w, x)
    o16 = tk.swiglu_apply(*w, x, mm_bf16=True)
    err = rel_rms(exact, o16)
    assert 1e-4 < err < 3e-2, err  # really rounded, and still close
    # same order as PyTorch's own bf16 matmuls on this input (the interpreter's bf16 cast
    # truncates where the GPU rounds to nearest, so no bitwise comparison here)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch_bf16 = apply_rows(w, x).float()
    assert err < 4 * rel_rms(exact, torch_bf16) + 1e-3


@pytest.mark.parametrize("norm", ["post", "pre", None], ids=lambda n: f"norm-{n}")
@pytest.mark.parametrize("momentum", [False, True], ids=["nomom", "mom"])
def test_fused_update_equals_update_rule(norm: str | None, momentum: bool) -> None:
    N, rows, cols = 3, 7, 19
    g = torch.Generator().manual_seed(3)
    w, d, m = (torch.randn(N, rows, cols, generator=g) for _ in range(3))
    rho = torch.rand(N, rows, 1, generator=g) + 0.5
    mu = torch.rand(N, generator=g)
    new_w, new_x, new_m = tk.fused_update(
        w,
        d,
        rho=None if norm is None else rho,
        momentum=m if momentum else None,
        mu=mu if momentum else None,
        store_sum=norm == "pre",
    )
    step = d + mu.view(N, 1, 1) * m if momentum else d
    x = w + step
    torch.testing.assert_close(new_w, x if norm is None else renorm(x, rho), rtol=1e-5, atol=1e-6)
    if momentum:
        torch.testing.assert_close(new_m, step)
    else:
        assert new_m is None
    if norm == "pre":
        torch.testing.assert_close(new_x, x)


def test_fused_update_momentum_without_mu_raises() -> None:
    w = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="momentum needs mu"):
        tk.fused_update(w, w, rho=None, momentum=w)


OP_CASES = {
    "post-mom-B2-T23-D12-Dh20-C8": dict(shape=(2, 23, 2, 12, 20, 8), use_beta=True),
    "pre-nomom-T16-C8": dict(shape=(1, 16, 1, 9, 6, 8), weight_norm="pre"),
    "none-muon-mom-T21-C16": dict(
        shape=(1, 37, 2, 8, 8, 16), use_beta=True, weight_norm=None, muon="tuned"
    ),
}


@pytest.mark.parametrize("case", list(OP_CASES), ids=list(OP_CASES))
def test_triton_op_equals_chunk_forward_grads_state(case: str) -> None:
    kw = dict(OP_CASES[case])
    B, T, H, D, Dh, C = kw.pop("shape")  # type: ignore[misc]
    use_beta = bool(kw.pop("use_beta", False))
    inp = make_inputs(B, T, H, D, Dh, dtype=torch.float32, requires_grad=True, seed=4)
    leaves = inp.leaves(beta=use_beta)
    res = {}
    for impl in ("chunk", "triton"):
        o, st = run(impl, inp, C=C, use_beta=use_beta, **kw)
        res[impl] = (o, st, torch.autograd.grad(scalar_loss(o, st), leaves))
    (o1, s1, g1), (o2, s2, g2) = res["chunk"], res["triton"]
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-5)
    assert_states_close(s2, s1, rtol=1e-4, atol=1e-5)
    for i, (a, b) in enumerate(zip(g2, g1, strict=True)):
        assert rel_rms(b, a) < 1e-4, (i, rel_rms(b, a))


def test_triton_bf16_close_to_fp64_reference() -> None:
    """bf16 inputs: fp32 state, bf16 dot operands; tolerance of the bf16 path (docs/lact_op.md)."""
    B, T, H, D, Dh, C = 1, 40, 2, 16, 16, 16
    inp = make_inputs(B, T, H, D, Dh, dtype=torch.float64, seed=5)
    for t in (inp.q, inp.k, inp.v):  # the reference sees the same (bf16-representable) inputs
        t.copy_(t.bfloat16().double())
    for t in inp.leaves():
        t.requires_grad_(True)
    o_ref, s_ref = naive_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=C, beta=inp.beta)
    g_ref = torch.autograd.grad(scalar_loss(o_ref, s_ref), inp.leaves())
    xs = [t.detach().bfloat16().requires_grad_() for t in (inp.q, inp.k, inp.v)]
    rest = [t.detach().float().requires_grad_() for t in (inp.lr, inp.beta, *inp.w)]
    o, st = tri.triton_lact(*xs, rest[0], FastWeights(*rest[2:]), chunk_size=C, beta=rest[1])
    assert o.dtype == torch.bfloat16 and st.weights.down.dtype == torch.float32
    g = torch.autograd.grad(scalar_loss(o.double(), st.to(torch.float64)), xs + rest)
    # the interpreter's bf16 cast truncates (the GPU rounds to nearest): looser than test 22
    assert rel_rms(o_ref, o) < 2e-2
    assert rel_rms(s_ref.weights.down, st.weights.down) < 1e-2
    for i, (a, b) in enumerate(zip(g_ref, g, strict=True)):
        assert rel_rms(a, b) < 3e-2, (i, rel_rms(a, b))


def test_dispatch_auto_picks_chunk_on_cpu_and_triton_on_request() -> None:
    q = torch.zeros(1, 4, 1, 8)
    assert resolve_impl("auto", q) is chunk_lact
    assert resolve_impl("triton", q) is tri.triton_lact


def test_triton_rejects_float64_with_advice() -> None:
    inp = make_inputs(1, 8, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="impl='chunk' for float64"):
        run("triton", inp, C=4)


@pytest.mark.gpu
def test_triton_bf16_vs_naive_on_cuda() -> None:
    """Spec test 22 on the 'real' kernels: bf16 Triton vs fp32 naive, relative RMS error."""
    inp = make_inputs(2, 300, 2, 64, 64, dtype=torch.float32, seed=6)
    for t in (inp.q, inp.k, inp.v):
        t.copy_(t.bfloat16().float())
    dev = torch.device("cuda")
    w = FastWeights(*(t.to(dev).requires_grad_() for t in inp.w))  # type: ignore[union-attr]
    x = [t.to(dev).requires_grad_() for t in (inp.q, inp.k, inp.v, inp.lr, inp.beta)]
    o_ref, s_ref = naive_lact(*x[:4], w, chunk_size=128, beta=x[4])
    g_ref = torch.autograd.grad(
        scalar_loss(o_ref.double().cpu(), s_ref.to("cpu", torch.float64)), x + list(w)
    )
    xb = [t.detach().bfloat16().requires_grad_() for t in x[:3]]
    o, st = resolve_impl("auto", xb[0])(*xb, x[3], w, chunk_size=128, beta=x[4])
    g = torch.autograd.grad(
        scalar_loss(o.double().cpu(), st.to("cpu", torch.float64)), xb + x[3:] + list(w)
    )
    assert rel_rms(o_ref, o) < 5e-3  # spec test 22
    for i, (a, b) in enumerate(zip(g_ref, g, strict=True)):
        assert rel_rms(a, b) < 1e-2, (i, rel_rms(a, b))  # spec asks 5e-3: reported by gpu_lact.py


def test_triton_mixed_input_dtypes_take_the_bf16_path() -> None:
    """A layer under autocast can hand fp32 q/k and bf16 v: Triton runs the mixed path like bf16."""
    from batchcraft.ops.lact.bf16 import bf16_lact

    inp = make_inputs(1, 20, 1, 8, 8, dtype=torch.float32, seed=7)
    v16 = inp.v.bfloat16()
    o, st = tri.triton_lact(inp.q, inp.k, v16, inp.lr, inp.w, chunk_size=8)
    o2, st2 = bf16_lact(inp.q, inp.k, v16, inp.lr, inp.w, chunk_size=8)
    assert st.weights.down.dtype == torch.float32
    assert rel_rms(o2, o) < 3e-2 and rel_rms(st2.weights.down, st.weights.down) < 1e-2


def test_triton_backward_saves_only_weights_and_inputs() -> None:
    """Saved-for-backward numel: inputs + per-chunk weights (+ rho), not the chunk activations."""
    inp = make_inputs(1, 64, 2, 8, 16, dtype=torch.float32, requires_grad=True, seed=8)
    saved = {}
    for impl in ("chunk", "triton"):
        seen: dict[tuple[object, ...], int] = {}

        def pack(t: torch.Tensor, seen: dict[tuple[object, ...], int] = seen) -> torch.Tensor:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape), t.stride())] = t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run(impl, inp, C=16, use_beta=True)
        saved[impl] = sum(seen.values())
    N, L, D, Dh, n = 2, 64, 8, 16, 4
    # q, k, v, lr, beta + the weights entering each of the n chunks + rho, plus the small graph
    # of the state initialisation (row norms): well under 2x this, while the chunk path (no
    # recompute) keeps every chunk's pre-activations (7 * Dh per token and head) on top
    minimal = 3 * N * L * D + N * L * 4 + n * 3 * N * D * Dh + 3 * N * Dh
    assert saved["triton"] < 2 * minimal < saved["chunk"], saved


def test_swiglu_apply_writes_into_a_chunk_slice_and_checks_out() -> None:
    g = torch.Generator().manual_seed(9)
    w = _weights(2, 12, 20, g)
    x = torch.randn(2, 30, 12, generator=g)
    whole = torch.zeros(2, 30, 12)
    tk.swiglu_apply(*w, x[:, 10:25], out=whole[:, 10:25])
    torch.testing.assert_close(whole[:, 10:25], apply_rows(w, x[:, 10:25]), rtol=1e-5, atol=1e-5)
    assert whole[:, :10].abs().sum() == 0 and whole[:, 25:].abs().sum() == 0
    with pytest.raises(ValueError, match="out must be fp32"):
        tk.swiglu_apply(*w, x, out=torch.empty(2, 30, 12, dtype=torch.float64))
