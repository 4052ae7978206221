"""The multi-tensor C kernel behind ``Adan(fused=True)`` on the CPU, through the optimizer.

The kernel computes fp64 parameters in fp64, so against the single-tensor reference it is held to
fp64 rounding (the two order their operations differently, so not bitwise).
"""

from __future__ import annotations

import copy
import ctypes
import math
from unittest import mock

import pytest
import torch

from batchcraft.optim import Adan, adan
from batchcraft.optim import _adan_cpu as cpu

pytestmark = pytest.mark.skipif(not cpu.has_compiler(), reason="the kernel needs a C compiler")

F64 = torch.float64
STATE_KEYS = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad", "step")
TIGHT = dict(atol=1e-13, rtol=1e-12)  # fp64: a few ulps after ~10 steps


def _grads(params: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + k)
    return [p.detach() * 0.5 + torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _params(shapes, dtype=F64, seed=0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _assert_same_run(a, opt_a, b, opt_b, **tol) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)
        assert (x in opt_a.state) == (y in opt_b.state)
        if x in opt_a.state:
            assert set(opt_a.state[x]) == set(opt_b.state[y]) == set(STATE_KEYS)
            for key in STATE_KEYS:
                sa, sb = opt_a.state[x][key], opt_b.state[y][key]
                assert sa.shape == sb.shape and sa.dtype == sb.dtype, key
                torch.testing.assert_close(sa, sb, **tol)


def test_fused_equals_single_through_a_messy_run() -> None:
    """Two groups (lr tensor, other betas, no_prox), clipping, maximize, a grad-less parameter,
    one that arrives late, a zero-size and a non-contiguous one, a group added mid-run and a
    restart: fused == single at fp64 rounding, state included."""
    shapes = [(4, 3), (7,), (0,), (1,), (40000,), (3, 5)]

    def build(flags: dict):
        ps = _params(shapes)
        ps[5] = ps[5].detach().t().contiguous().t().requires_grad_()  # non-contiguous leaf
        extra = _params([(6, 2), (20000,)], seed=1)
        groups = [
            {"params": ps[:3], "lr": torch.tensor(0.03), "weight_decay": 0.02},
            {"params": ps[3:], "lr": 0.01, "betas": (0.9, 0.9, 0.999), "no_prox": True,
             "weight_decay": 0.1, "maximize": True},
        ]  # fmt: skip
        return ps, extra, Adan(groups, max_grad_norm=5.0, **flags)

    runs = []
    for flags in (dict(foreach=False), dict(fused=True)):
        ps, extra, opt = build(flags)
        assert not ps[5].is_contiguous()
        for k in range(1, 13):
            if k == 4:
                opt.add_param_group({"params": extra, "lr": 0.02, "betas": (0.95, 0.9, 0.99)})
            if k == 8:
                opt.restart_opt()
            everyone = ps + (extra if k >= 4 else [])
            for i, (p, g) in enumerate(zip(everyone, _grads(everyone, k), strict=True)):
                late = i == 1 and k < 6  # the (7,) parameter first gets a gradient at step 6
                p.grad = None if (late or i == 3) else g  # (1,) never gets one
            opt.step()
        runs.append((ps + extra, opt))
    (a, opt_a), (b, opt_b) = runs
    assert b[3] not in opt_b.state and torch.equal(a[3], b[3])
    assert float(opt_b.state[b[1]]["step"]) == 5.0  # steps 8-12, after the restart at step 8
    _assert_same_run(a, opt_a, b, opt_b, **TIGHT)


def test_shared_step_and_fp32_state_for_bf16() -> None:
    """Group-level bias corrections (``shared_step``) and fp32 state with bf16 parameters."""
    a, b = _params([(5, 3), (4,)]), _params([(5, 3), (4,)])
    opt_a = Adan(a, lr=0.05, shared_step=True, foreach=False)
    opt_b = Adan(b, lr=0.05, shared_step=True, fused=True)
    for k in range(1, 8):
        for ps in (a, b):
            for i, (p, g) in enumerate(zip(ps, _grads(ps, k), strict=True)):
                p.grad = g if (i == 0 or k > 3) else None
        opt_a.step()
        opt_b.step()
    _assert_same_run(a, opt_a, b, opt_b, **TIGHT)

    base = [t.detach().to(torch.bfloat16) for t in _params([(50, 3), (4,)])]
    c = [t.clone().requires_grad_() for t in base]
    d = [t.clone().requires_grad_() for t in base]
    opt_c = Adan(c, lr=0.01, foreach=True, state_dtype=torch.float32)
    opt_d = Adan(d, lr=0.01, fused=True, state_dtype=torch.float32)
    for k in range(1, 4):
        for ps in (c, d):
            for p, g in zip(ps, _grads([t.float() for t in base], k), strict=True):
                p.grad = g.to(torch.bfloat16)
        opt_c.step()
        opt_d.step()
    for x, y in zip(c, d, strict=True):
        assert opt_d.state[y]["exp_avg_sq"].dtype == torch.float32
        # fp32 state within fp32 rounding; the bf16 parameter within one bf16 unit
        torch.testing.assert_close(opt_c.state[x]["exp_avg"], opt_d.state[y]["exp_avg"],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        torch.testing.assert_close(x.float(), y.float(), rtol=2**-7, atol=1e-3)


def test_mixed_dtypes_each_bucket_as_if_alone() -> None:
    """fp64, fp32 and bf16 parameters in one optimizer: each dtype's result is bitwise the one
    it gets in an optimizer of its own (the buckets do not interact)."""
    dtypes = [F64, torch.float32, torch.bfloat16, F64, torch.float32]
    shapes = [(3, 4), (17,), (9,), (2,), (40000,)]

    def make():
        return [_params([s], seed=i)[0].detach().to(dt).requires_grad_()
                for i, (s, dt) in enumerate(zip(shapes, dtypes, strict=True))]  # fmt: skip

    mixed = make()
    alone = {dt: [p for p in make() if p.dtype == dt] for dt in set(dtypes)}
    opt = Adan(mixed, lr=0.02, weight_decay=0.01, fused=True)
    opts = {dt: Adan(ps, lr=0.02, weight_decay=0.01, fused=True) for dt, ps in alone.items()}
    for k in range(1, 5):
        gs = _grads([p.detach().double() for p in mixed], k)
        for p, g in zip(mixed, gs, strict=True):
            p.grad = g.to(p.dtype)
        for dt, ps in alone.items():
            own = [g for g, p in zip(gs, mixed, strict=True) if p.dtype == dt]
            for p, g in zip(ps, own, strict=True):
                p.grad = g.to(dt)
        opt.step()
        for o in opts.values():
            o.step()
    for dt, ps in alone.items():
        ours = [p for p in mixed if p.dtype == dt]
        for x, y in zip(ours, ps, strict=True):
            assert torch.equal(x, y)
            for key in STATE_KEYS:
                assert torch.equal(opt.state[x][key], opts[dt].state[y][key]), (dt, key)


def test_one_kernel_call_per_dtype_bucket() -> None:
    """300 tensors of two dtypes cost two C calls, not 300 (the point of the multi-tensor path)."""
    ps = _params([(3,)] * 200, dtype=torch.float32) + _params([(2, 2)] * 100)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt = Adan(ps, lr=0.1, fused=True)
    with mock.patch.object(cpu, "adan_cpu_update", wraps=cpu.adan_cpu_update) as spy:
        opt.step()
    assert spy.call_count == 2
    assert sorted(len(c.args[0]) for c in spy.call_args_list) == [100, 200]
    assert all(float(opt.state[p]["step"]) == 1.0 for p in ps)


def test_thread_count_does_not_change_the_result() -> None:
    """Chunks are independent, so 1 and 2 threads give bitwise the same update."""
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            ps = _params([(40000,), (16385,), (5,)], dtype=torch.float32)
            opt = Adan(ps, lr=0.01, weight_decay=0.02, max_grad_norm=50.0, fused=True)
            for k in range(1, 4):
                for p, g in zip(ps, _grads(ps, k), strict=True):
                    p.grad = g
                opt.step()
            outs.append([p.detach().clone() for p in ps])
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(*outs, strict=True):
        assert torch.equal(x, y)


def test_functional_call_with_float64_step_counters() -> None:
    """The C kernel counts in float32; other counters are converted and written back."""
    p64 = _params([(6,)])[0].detach()
    runs = []
    for step_dtype in (torch.float32, F64):
        p, g = p64.clone(), torch.linspace(-1, 1, 6, dtype=F64)
        m, v, n, prev = (torch.zeros(6, dtype=F64) for _ in range(4))
        steps = [torch.tensor(0.0, dtype=step_dtype)]
        for _ in range(3):
            adan([p], [g], [m], [v], [n], [prev], steps, fused=True, lr=0.1, beta1=0.98,
                 beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, no_prox=False,
                 maximize=False)  # fmt: skip
        assert steps[0].dtype == step_dtype and float(steps[0]) == 3.0
        runs.append(p)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("path", [dict(foreach=False), dict(foreach=True), dict(fused=True)],
                         ids=["single", "foreach", "fused"])  # fmt: skip
def test_first_step_after_restart_ignores_a_broken_prev_grad(path: dict) -> None:
    """Step 1 seeds g_prev = g, so a NaN left in prev_grad (say, before a restart) is harmless."""
    a = _params([(5,), (40000,)])
    opt = Adan(a, lr=0.05, **path)
    for p, g in zip(a, _grads(a, 1), strict=True):
        p.grad = g
    opt.step()
    opt.restart_opt()
    for p in a:
        opt.state[p]["prev_grad"].fill_(math.nan)
    b = [p.detach().clone().requires_grad_() for p in a]
    fresh = Adan(b, lr=0.05, **path)
    for ps, o in ((a, opt), (b, fresh)):
        for p, g in zip(ps, _grads(ps, 2), strict=True):
            p.grad = g
        o.step()
    for x, y in zip(a, b, strict=True):
        assert torch.isfinite(x).all()
        assert torch.equal(x, y)


def test_kernel_builds_into_an_empty_cache(tmp_path) -> None:
    """A clean build (as on a new machine) produces a library with every kernel symbol."""
    out = tmp_path / "adan_test.so"
    cpu._build(cpu._compiler(), out)
    lib = ctypes.CDLL(str(out))
    for (p_dtype, _), name in cpu.CPU_KERNELS.items():
        assert hasattr(lib, name) or p_dtype == torch.float16, name
    assert not list(tmp_path.glob("*.tmp.so")), "the temporary file was not renamed"


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_misaligned_state_is_an_error_not_a_memory_fault(bad: str) -> None:
    """The kernel reads raw pointers, so a state tensor of the wrong size or dtype is refused."""
    p, g = torch.zeros(8), torch.ones(8)
    m, v, n, prev = (torch.zeros(8) for _ in range(4))
    if bad == "shape":
        n = torch.zeros(4)
    else:
        prev = torch.zeros(8, dtype=F64)
    with pytest.raises(ValueError, match=r"exp_avg_sq|prev_grad"):
        adan([p], [g], [m], [v], [n], [prev], [torch.tensor(0.0)], fused=True, lr=0.1,
             beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.0, no_prox=False,
             maximize=False)  # fmt: skip
    assert torch.equal(p, torch.zeros(8))


def test_state_dict_moves_between_paths() -> None:
    """The fused path keeps torch's state format: a single-tensor checkpoint continues under
    fused as it would under single (fp64 rounding), and saves the same keys, shapes and dtypes."""
    a = _params([(4, 3), (40000,), (1,)])
    opt_a = Adan(a, lr=0.03, weight_decay=0.02, foreach=False)
    for k in range(1, 6):
        for p, g in zip(a, _grads(a, k), strict=True):
            p.grad = g
        opt_a.step()
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = Adan(b, lr=0.03, weight_decay=0.02, fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # torch would alias the tensors
    for k in range(6, 10):
        for ps, o in ((a, opt_a), (b, opt_b)):
            for p, g in zip(ps, _grads(ps, k), strict=True):
                p.grad = g
            o.step()
    _assert_same_run(a, opt_a, b, opt_b, **TIGHT)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            assert (sa[i][key].shape, sa[i][key].dtype) == (sb[i][key].shape, sb[i][key].dtype)
