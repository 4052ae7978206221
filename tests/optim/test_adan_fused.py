"""Fused Adan == foreach / single: the multi-tensor C kernel (CPU) and the Triton kernel (CPU interpreter)."""

from __future__ import annotations

import pytest
import torch

from batchcraft import _capabilities as caps
from batchcraft.optim import Adan
from batchcraft.optim._adan_cpu import has_compiler
from batchcraft.optim._adan_fused import _fused_adan

needs_triton = pytest.mark.skipif(
    not caps.has_triton() or not (caps.has_cuda() or caps.triton_interpret()),
    reason="needs triton on CUDA or TRITON_INTERPRET=1",
)
HP = dict(lr=0.05, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, differentiable=False,
          group_step=None)  # fmt: skip
BF16_ULP = 2.0**-7  # relative spacing of bfloat16
FP16_ULP = 2.0**-10


def _state(n: int, dtype: torch.dtype, state_dtype: torch.dtype, gen: torch.Generator):
    p = torch.randn(n, generator=gen).to(dtype)
    m, v, prev = (torch.randn(n, generator=gen).to(state_dtype) * 0.1 for _ in range(3))
    nsq = torch.rand(n, generator=gen).to(state_dtype) * 0.1
    return [p, m, v, nsq, prev]


def _step(fn, tensors, grad, *, first, clip, **kw):
    p, m, v, n, prev = tensors
    step = torch.tensor(0.0 if first else 4.0)
    fn([p], [grad], [m], [v], [n], [prev], [step], clip_coef=clip, **HP, **kw)
    assert float(step) == (1.0 if first else 5.0)


def _foreach(*args, **kw):
    from batchcraft.optim._adan_functional import _multi_tensor_adan

    return _multi_tensor_adan(*args, **kw)


ULP = {torch.bfloat16: BF16_ULP, torch.float16: FP16_ULP, torch.float32: 2e-6}


def _check_equal(backend: str, n: int, dtype: torch.dtype, state_dtype: torch.dtype, kw: dict):
    """One fused step vs the foreach path run in fp32 on the same (upcast) inputs.

    The fused kernel keeps fp32 in registers and rounds once on store, so each output is within
    about one unit of its storage dtype of the fp32 reference (2 ulps: the CPU interpreter may
    truncate instead of rounding to nearest). Errors are relative to ``|ref| + scale`` with
    ``scale = lr`` for the parameter (the size of one update) and ``1e-2`` for the state (entries are ~0.1).
    """
    gen = torch.Generator().manual_seed(n)
    base = _state(n, dtype, state_dtype, gen)
    grad = torch.randn(n, generator=gen).to(dtype)
    grad_copy = grad.clone()
    ours = [t.clone() for t in base]
    ref = [t.float().clone() for t in base]  # .float() of fp32 is not a copy
    clip = torch.tensor(0.7) if kw.pop("clip", False) else None
    first = kw.pop("first", False)

    def fused(*a, **k):
        return _fused_adan(*a, backend=backend, **k)

    _step(fused, ours, grad, first=first, clip=clip, **kw)
    _step(_foreach, ref, grad.float(), first=first, clip=clip, **kw)
    assert torch.equal(grad, grad_copy)
    for i, (name, a, b) in enumerate(zip(("p", "m", "v", "n", "prev"), ours, ref, strict=True)):
        tol = 2 * ULP[dtype if i == 0 else state_dtype]
        scale = HP["lr"] if i == 0 else 1e-2
        err = float(((a.float() - b).abs() / (b.abs() + scale)).max())
        assert err <= tol, f"{name}: max relative error {err:.3g} > {tol:.3g}"
    # the tail beyond the last full block was updated too
    assert not torch.equal(ours[0][-1:], base[0][-1:])


SIZES = [1, 3, 4097, 5000]
CASES = {
    "plain": {},
    "first": dict(first=True),
    "prox-clip": dict(weight_decay=0.1, no_prox=False, clip=True),
    "noprox-max": dict(weight_decay=0.1, no_prox=True, maximize=True),
}


@needs_triton
@pytest.mark.triton
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n", SIZES, ids=[f"n{n}" for n in SIZES])
def test_triton_fp32_equals_foreach(n: int, case: str) -> None:
    kw = dict(weight_decay=0.0, no_prox=False, maximize=False) | CASES[case]
    _check_equal("triton", n, torch.float32, torch.float32, kw)


@needs_triton
@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtype", ["same", "fp32"])
def test_triton_low_precision(dtype: torch.dtype, state_dtype: str) -> None:
    sd = dtype if state_dtype == "same" else torch.float32
    kw = dict(weight_decay=0.05, no_prox=False, maximize=False)
    _check_equal("triton", 4097, dtype, sd, kw)


needs_cc = pytest.mark.skipif(not has_compiler(), reason="the fused CPU kernel needs a C compiler")
BACKENDS = [
    pytest.param("cpu", marks=needs_cc),
    pytest.param("triton", marks=[needs_triton, pytest.mark.triton]),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_optimizer_many_small_tensors_and_empty(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHCRAFT_ADAN_FUSED", backend)
    gen = torch.Generator().manual_seed(0)
    shapes = [(0,), (1,), (3, 1), (17, 5), (2, 3, 4), (4097,)]
    a = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    b = [t.detach().clone().requires_grad_() for t in a]
    opt_a = Adan(a, lr=0.02, weight_decay=0.02, max_grad_norm=1.0, fused=True)
    opt_b = Adan(b, lr=0.02, weight_decay=0.02, max_grad_norm=1.0, foreach=True)
    for _ in range(7):
        gs = [torch.randn(s, generator=gen) for s in shapes]
        for x, y, g in zip(a, b, gs, strict=True):
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad"):
            torch.testing.assert_close(
                opt_a.state[x][key], opt_b.state[y][key], rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_non_contiguous_param(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHCRAFT_ADAN_FUSED", backend)
    base = torch.randn(6, 5)
    a = base.clone().t().requires_grad_()  # non-contiguous view-like layout
    b = base.clone().t().contiguous().requires_grad_()
    opt_a, opt_b = Adan([a], lr=0.1, fused=True), Adan([b], lr=0.1, foreach=True)
    for k in range(3):
        g = torch.full((5, 6), 0.1 * (k + 1))
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


CPU_SIZES = [1, 3, 4097, 16384, 16385, 40000]  # 16384 elements per work item of the C kernel


@needs_cc
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n", CPU_SIZES, ids=[f"n{n}" for n in CPU_SIZES])
def test_cpu_kernel_fp32_equals_foreach(n: int, case: str) -> None:
    kw = dict(weight_decay=0.0, no_prox=False, maximize=False) | CASES[case]
    _check_equal("cpu", n, torch.float32, torch.float32, kw)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("state_dtype", ["same", "fp32"])
@pytest.mark.parametrize("case", ["prox-clip", "noprox-max"])
def test_cpu_kernel_low_precision(dtype: torch.dtype, state_dtype: str, case: str) -> None:
    sd = dtype if state_dtype == "same" else torch.float32
    kw = dict(weight_decay=0.0, no_prox=False, maximize=False) | CASES[case]
    _check_equal("cpu", 40000, dtype, sd, kw)


@needs_cc
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_kernel_fp32_params_low_precision_state(state_dtype: torch.dtype) -> None:
    kw = dict(weight_decay=0.05, no_prox=False, maximize=False, clip=True)
    _check_equal("cpu", 40000, torch.float32, state_dtype, kw)


@needs_cc
def test_cpu_kernel_refuses_a_pair_it_lacks() -> None:
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    p.grad = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"no kernel for torch\.float64 params"):
        Adan([p], fused=True, state_dtype=torch.float32).step()


@pytest.mark.gpu
@pytest.mark.triton
def test_cuda_fused_equals_foreach() -> None:
    for n in [1, 3, 4097, 5000, 2**20 + 7]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            gen = torch.Generator().manual_seed(n)
            p0 = torch.randn(n, generator=gen).to(dtype)
            a, b = p0.cuda().requires_grad_(), p0.cuda().requires_grad_()
            opt_a = Adan([a], lr=0.01, fused=True, state_dtype=torch.float32)
            opt_b = Adan([b], lr=0.01, foreach=True, state_dtype=torch.float32)
            for _ in range(3):
                g = torch.randn(n, generator=gen).to(dtype).cuda()
                a.grad, b.grad = g.clone(), g.clone()
                opt_a.step()
                opt_b.step()
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-3)


def test_fused_modules_do_not_import_the_functional_module() -> None:
    """The dependency is one-way: ``_adan_functional`` imports ``_adan_fused``, never the reverse."""
    import ast
    import inspect

    from batchcraft.optim import _adan_cpu, _adan_fused

    for mod in (_adan_fused, _adan_cpu):
        tree = ast.parse(inspect.getsource(mod))
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [n for n in names if n and ("_adan_functional" in n or n.endswith("optim.adan"))]
        assert not bad, f"{mod.__name__} imports {bad}"
