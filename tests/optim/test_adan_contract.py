"""Adan and the torch.optim contract: clipping, grads untouched, no host sync, paths agree."""

from __future__ import annotations

import copy
import math
import warnings
from unittest import mock

import pytest
import torch

from batchcraft.optim import Adan
from batchcraft.optim._adan_cpu import has_compiler
from batchcraft.optim._adan_functional import _single_tensor_adan

F64 = torch.float64
STATE_KEYS = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad", "step")
NEEDS_CC = pytest.mark.skipif(not has_compiler(), reason="the fused CPU kernel needs a C compiler")


def make_params(dtype: torch.dtype = F64, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (7,), (1,), (2, 5, 3)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def grads_for(params: list[torch.Tensor], k: int, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + k)
    return [
        scale * (p.detach() * 1.5 + torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for p in params
    ]


def run(params, steps, start=1, scale=1.0, **kw):
    opt = Adan(params, **kw)
    for k in range(start, start + steps):
        for p, g in zip(params, grads_for(params, k, scale), strict=True):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize(
    "path", [dict(foreach=False), dict(foreach=True), pytest.param(dict(fused=True), marks=NEEDS_CC)],
    ids=["single", "foreach", "fused"],
)  # fmt: skip
def test_clipping_equals_prescaled_grads(path: dict) -> None:
    a, b = make_params(), make_params()
    opt_a = Adan(a, lr=0.05, max_grad_norm=0.5, **path)
    opt_b = Adan(b, lr=0.05, **path)
    for k in range(1, 8):
        ga = grads_for(a, k)
        gb = grads_for(b, k)
        norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in gb]))
        coef = min(1.0, 0.5 / (float(norm) + 1e-8))
        for p, g in zip(a, ga, strict=True):
            p.grad = g
        for p, g in zip(b, gb, strict=True):
            p.grad = g * coef
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-14, rtol=1e-13)


def test_huge_max_grad_norm_is_off() -> None:
    a, b = make_params(), make_params()
    run(a, 7, lr=0.05, max_grad_norm=1e12)
    run(b, 7, lr=0.05)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-15, rtol=1e-14)


@pytest.mark.parametrize(
    "kw",
    [dict(max_grad_norm=0.3), dict(maximize=True), dict(foreach=True, max_grad_norm=0.3,
     maximize=True), dict(foreach=False, weight_decay=0.1, no_prox=True),
     pytest.param(dict(fused=True, max_grad_norm=0.3, maximize=True), marks=NEEDS_CC)],
    ids=["clip", "maximize", "foreach-clip-max", "single-wd", "fused-clip-max"],
)  # fmt: skip
def test_grads_never_mutated(kw: dict) -> None:
    params = make_params(torch.float32)
    opt = Adan(params, lr=0.1, **kw)
    for k in range(1, 4):
        gs = grads_for(params, k)
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, gs, strict=True):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_clipping_without_host_sync(foreach: bool) -> None:
    """On the meta device any host read raises; a mock also forbids .item() on non-step tensors."""
    p = torch.nn.Parameter(torch.randn(6, 5, device="meta"))
    p.grad = torch.randn(6, 5, device="meta")
    Adan([p], max_grad_norm=1.0, foreach=foreach).step()  # would raise on .item()/bool()
    params = make_params(torch.float32)
    opt = Adan(params, max_grad_norm=0.1, foreach=foreach)
    for k in range(1, 3):
        for q, g in zip(params, grads_for(params, k), strict=True):
            q.grad = g
        read: list[torch.Tensor] = []
        patches = {}
        for name in ("item", "__float__", "__bool__", "tolist"):
            real = getattr(torch.Tensor, name)

            def spy(t, *a, _real=real, _read=read, **kw):  # type: ignore[no-untyped-def]
                _read.append(t)
                return _real(t, *a, **kw)

            patches[name] = spy
        with mock.patch.multiple(torch.Tensor, **patches):
            opt.step()
        steps = [opt.state[q]["step"] for q in params]
        bad = [t for t in read if not any(t is s for s in steps)]
        assert read, "the spy saw no host reads at all (the per-parameter step counters)"
        assert not bad, f"host reads of non-counter tensors: {[tuple(t.shape) for t in bad]}"


def test_late_arriving_param_gets_a_first_step() -> None:
    early = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    late = torch.tensor([0.5, 2.0], dtype=F64, requires_grad=True)
    opt = Adan([early, late], lr=0.1)
    for _ in range(10):
        early.grad = torch.tensor([0.3, -0.2], dtype=F64)
        opt.step()
    assert late not in opt.state and torch.equal(late, torch.tensor([0.5, 2.0], dtype=F64))
    late.grad = torch.tensor([1.0, -3.0], dtype=F64)
    early.grad = None
    before = late.detach().clone()
    opt.step()
    move = (late.detach() - before).abs()
    torch.testing.assert_close(move, torch.full_like(move, 0.1), atol=1e-8, rtol=0)


def test_shared_step_reproduces_official_group_counter() -> None:
    early = torch.tensor([1.0], dtype=F64, requires_grad=True)
    late = torch.tensor([0.5], dtype=F64, requires_grad=True)
    opt = Adan([early, late], lr=0.1, shared_step=True)
    for _ in range(10):
        early.grad = torch.tensor([0.3], dtype=F64)
        opt.step()
    late.grad = torch.tensor([1.0], dtype=F64)
    opt.step()  # group step 11: m/bc1 = 0.02/(1-0.98^11), den = 0.1/sqrt(1-0.99^11)
    k, b1, b3 = 11, 0.98, 0.99
    want = 0.1 * (0.02 / (1 - b1**k)) / (0.1 / math.sqrt(1 - b3**k) + 1e-8)
    assert abs(0.5 - float(late.detach()) - want) < 1e-12 and abs(want - 0.032) < 1e-3


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["fp64", "fp32"])
def test_foreach_equals_single_two_groups(dtype: torch.dtype) -> None:
    def groups(params):
        return [
            {"params": params[:2], "lr": torch.tensor(0.03), "weight_decay": 0.02},
            {"params": params[2:], "lr": 0.01, "betas": (0.9, 0.9, 0.999), "no_prox": True,
             "weight_decay": 0.1},
        ]  # fmt: skip

    a, b = make_params(dtype), make_params(dtype)
    opt_a = Adan(groups(a), foreach=False, max_grad_norm=2.0)
    opt_b = Adan(groups(b), foreach=True, max_grad_norm=2.0)
    for k in range(1, 9):
        for params in (a, b):
            for p, g in zip(params, grads_for(params, k), strict=True):
                p.grad = g
        opt_a.step()
        opt_b.step()
    tol = dict(atol=1e-14, rtol=1e-14) if dtype == F64 else dict(atol=1e-6, rtol=1e-6)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)
        for key in STATE_KEYS:
            torch.testing.assert_close(opt_a.state[x][key], opt_b.state[y][key], **tol)


def test_maximize_equals_minimising_negative() -> None:
    a, b = make_params(), make_params()
    opt_a = Adan(a, lr=0.05, maximize=True, weight_decay=0.01)
    opt_b = Adan(b, lr=0.05, weight_decay=0.01)
    for k in range(1, 8):
        for p, g in zip(a, grads_for(a, k), strict=True):
            p.grad = -g  # gradient of f = -loss
        for p, g in zip(b, grads_for(b, k), strict=True):
            p.grad = g
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_closure_returns_loss() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = Adan([x], lr=0.1)

    def closure() -> float:
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return float(loss.detach())

    assert opt.step(closure) == pytest.approx(5.0)
    assert float(x[0].detach()) < 1.0


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_rosenbrock_converges(foreach: bool) -> None:
    xy = torch.tensor([-1.5, 2.0], dtype=F64, requires_grad=True)
    opt = Adan([xy], lr=1e-2, foreach=foreach)
    loss = torch.tensor(0.0)
    for _ in range(2000):
        opt.zero_grad()
        loss = (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-3


def test_mlp_on_digits_with_cosine_schedule() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x[:256], dtype=torch.float32) / 16.0
    y = torch.tensor(y[:256])
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    opt = Adan(model.parameters(), lr=1e-2, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize(
    ("kw", "word"),
    [(dict(lr=-1.0), "lr"), (dict(eps=-1e-8), "eps"), (dict(betas=(1.0, 0.9, 0.9)), "beta1"),
     (dict(betas=(0.9, -0.1, 0.9)), "beta2"), (dict(betas=(0.9, 0.9, 1.5)), "beta3"),
     (dict(betas=(0.9, 0.9)), "three betas"), (dict(weight_decay=-0.1), "weight_decay"),
     (dict(max_grad_norm=-1.0), "max_grad_norm"), (dict(fused=True, foreach=True), "exclusive"),
     (dict(differentiable=True, foreach=True), "single-tensor"), (dict(capturable=True), "capturable"),
     (dict(lr=torch.ones(2)), "one element"), (dict(lr=math.nan), "lr"),
     (dict(lr=torch.tensor(math.nan)), "lr"), (dict(eps=math.nan), "eps"),
     (dict(weight_decay=math.nan), "weight_decay"), (dict(max_grad_norm=math.nan), "max_grad_norm"),
     (dict(betas=(0.9, math.nan, 0.9)), "beta2")],
)  # fmt: skip
def test_invalid_hyper_parameters(kw: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        Adan([torch.zeros(2, requires_grad=True)], **kw)


def test_param_groups_are_validated_too() -> None:
    """NaN in a group (at construction or added later) is rejected like torch's AdamW does, and
    a rejected group is not left behind."""
    x, y = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="lr"):
        Adan([{"params": [x], "lr": math.nan}])
    opt = Adan([x])
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [y], "weight_decay": math.nan})
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.complex64)], "fused": True})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [y], "lr": 0.5})
    assert opt.param_groups[1]["lr"] == 0.5


def test_per_group_max_grad_norm_is_rejected() -> None:
    """Clipping is one global norm over every group, so a group's own value is an error."""
    x, y = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="optimizer-wide"):
        Adan([{"params": [x]}, {"params": [y], "max_grad_norm": 1.0}])
    opt = Adan([x], max_grad_norm=2.0)
    with pytest.raises(ValueError, match="optimizer-wide"):
        opt.add_param_group({"params": [y], "max_grad_norm": 0.0})
    opt.add_param_group({"params": [y], "max_grad_norm": 2.0})  # the same value is fine
    assert [g["max_grad_norm"] for g in opt.param_groups] == [2.0, 2.0]


def test_loaded_state_dict_keeps_the_constructor_max_grad_norm() -> None:
    """A state dict saved with another clip value warns, and the constructor's value is used."""
    a = make_params()
    sd = run(a, 3, lr=0.05, max_grad_norm=0.5).state_dict()
    b = [p.detach().clone().requires_grad_() for p in a]
    c = [p.detach().clone().requires_grad_() for p in a]
    opt_b, opt_c = Adan(b, lr=0.05), Adan(c, lr=0.05)  # no clipping
    with pytest.warns(UserWarning, match="max_grad_norm"):
        opt_b.load_state_dict(copy.deepcopy(sd))
    assert opt_b.param_groups[0]["max_grad_norm"] == 0.0
    sd["param_groups"][0]["max_grad_norm"] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt_c.load_state_dict(sd)  # the same value: no warning
    for k in range(4, 7):  # large gradients: a clip at 0.5 would change every step
        for params, opt in ((b, opt_b), (c, opt_c)):
            for p, g in zip(params, grads_for(params, k, scale=10.0), strict=True):
                p.grad = g
            opt.step()
    for p, q in zip(b, c, strict=True):
        assert torch.equal(p, q)


def test_functional_adan_is_exported() -> None:
    """``batchcraft.optim.adan`` is the functional API, not the ``adan`` submodule."""
    import batchcraft.optim
    import batchcraft.optim.adan  # importing the submodule must not rebind the name

    assert callable(batchcraft.optim.adan)
    assert batchcraft.optim.adan.__name__ == "adan"


def test_other_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        Adan([])
    with pytest.raises(ValueError, match="float16/bfloat16/float32"):
        Adan([torch.zeros(2, dtype=torch.complex64, requires_grad=True)], fused=True)
    with pytest.raises(ValueError, match="beta2"):
        Adan([{"params": [torch.zeros(2, requires_grad=True)], "betas": (0.9, 1.0, 0.9)}])
    x = torch.zeros(3, requires_grad=True)
    x.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Adan([x]).step()


def test_gradcheck_one_differentiable_step() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (3,)

    def one_step(p, g, m, v, n, prev):
        p, m, v, n, prev = (t.clone() for t in (p, m, v, n, prev))
        step = torch.tensor(2.0)  # a step > 1 so that g_prev matters
        _single_tensor_adan([p], [g], [m], [v], [n], [prev], [step], clip_coef=None, lr=0.1,
                            beta1=0.9, beta2=0.8, beta3=0.95, eps=1e-8, weight_decay=0.1,
                            no_prox=False, maximize=False, differentiable=True,
                            group_step=None)  # fmt: skip
        return p, m, v, n, prev

    inputs = [torch.randn(shape, generator=gen, dtype=F64) for _ in range(6)]
    inputs[4] = inputs[4].abs() + 0.5  # n > 0 keeps sqrt differentiable
    inputs = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(one_step, inputs)


def test_differentiable_step_through_optimizer() -> None:
    w = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    p = w * 1.0  # a non-leaf parameter on the tape
    p.retain_grad()
    opt = Adan([p], lr=0.1, differentiable=True)
    p.grad = (2 * p).detach()
    opt.step()
    p.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_fp32_state_for_bf16_params_survives_state_dict() -> None:
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in [(5, 3), (4,)]]
    a = [t.clone().requires_grad_() for t in base]
    b = [t.clone().requires_grad_() for t in base]
    opt_a = Adan(a, lr=0.01, foreach=False, state_dtype=torch.float32)
    opt_b = Adan(b, lr=0.01, foreach=True, state_dtype=torch.float32)
    for _ in range(3):
        gs = [torch.randn(t.shape, generator=gen).to(torch.bfloat16) for t in base]
        for x, y, g in zip(a, b, gs, strict=True):
            x.grad, y.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for x, y in zip(a, b, strict=True):
        assert opt_a.state[x]["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(x, y)
        for key in STATE_KEYS:
            assert torch.equal(opt_a.state[x][key], opt_b.state[y][key]), key
    c = [t.detach().clone().requires_grad_() for t in a]
    opt_c = Adan(c, lr=0.01, state_dtype=torch.float32)
    opt_c.load_state_dict(opt_a.state_dict())
    for x, z in zip(a, c, strict=True):
        m = opt_c.state[z]["exp_avg"]
        assert m.dtype == torch.float32 and torch.equal(m, opt_a.state[x]["exp_avg"])
