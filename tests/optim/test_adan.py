"""Adan: golden trajectories, paths equal each other, a literal reference, the torch.optim contract."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from batchcraft.optim import Adan
from batchcraft.optim._adan_cpu import has_compiler

F64 = torch.float64
A = torch.tensor([2.0, 0.5], dtype=F64)
GOLDEN = {  # spec §5: official implementation, CPU, float64; x after steps 1..5
    "A": (
        dict(lr=0.1),
        [[0.9000000005, -1.900000001], [0.800773158149, -1.800228681619],
         [0.702129458459, -1.700600744612], [0.604238047048, -1.601135150408],
         [0.507386782997, -1.501873365013]],
    ),
    "B": (
        dict(lr=0.1, weight_decay=0.1),
        [[0.891089109406, -1.881188119802], [0.784157501777, -1.763854058207],
         [0.678967107805, -1.647872719069], [0.575697384998, -1.533257242976],
         [0.474662080503, -1.420050225362]],
    ),
    "C": (
        dict(lr=0.1, weight_decay=0.1, no_prox=True),
        [[0.8900000005, -1.880000001], [0.782027597117, -1.761509653765],
         [0.675839956569, -1.644400800625], [0.571624380931, -1.528687272978],
         [0.469707643142, -1.414413261183]],
    ),
    "D": (
        dict(lr=0.1, max_grad_norm=0.5),
        [[0.900000002236, -1.900000004472], [0.800027951999, -1.799999684499],
         [0.700082342619, -1.700012210127], [0.600179732792, -1.600062408144],
         [0.500354373796, -1.500187950442]],
    ),
    "E": (
        dict(lr=0.01, betas=(0.9, 0.9, 0.999)),
        [[0.99000000005, -1.9900000001], [0.980005459791, -1.980002602125],
         [0.9700163786, -1.970007832314], [0.9600342044, -1.960016380496],
         [0.950060670742, -1.950029064883]],
    ),
}  # fmt: skip
# "fused" on the CPU is the multi-tensor C kernel, which computes fp64 parameters in fp64
PATHS = {"single": dict(foreach=False), "foreach": dict(foreach=True), "auto": {},
         "fused": dict(fused=True)}  # fmt: skip
NEEDS_CC = pytest.mark.skipif(not has_compiler(), reason="the fused CPU kernel needs a C compiler")


def paths(*names: str) -> list:
    """``names`` as pytest params; the fused one skips without a C compiler."""
    return [pytest.param(n, marks=NEEDS_CC) if n == "fused" else n for n in names]


def quad_trajectory(
    opt_kwargs: dict, steps: int = 5, dtype: torch.dtype = F64
) -> list[list[float]]:
    x = torch.tensor([1.0, -2.0], dtype=dtype, requires_grad=True)
    opt = Adan([x], **opt_kwargs)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (A.to(dtype) * x * x).sum()).backward()
        opt.step()
        out.append(x.detach().tolist())
    return out


def reference_adan(x0, grad_fn, steps, *, lr, betas=(0.98, 0.92, 0.99), eps=1e-8, wd=0.0,
                   no_prox=False, max_grad_norm=0.0):  # fmt: skip
    """Literal transcription of spec §2 for a list of fp64 tensors (test-only oracle)."""
    b1, b2, b3 = betas
    xs = [x.clone() for x in x0]
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) for x in xs]
    n = [torch.zeros_like(x) for x in xs]
    prev = [torch.zeros_like(x) for x in xs]
    traj = []
    for k in range(1, steps + 1):
        grads = grad_fn(xs, k)
        c = 1.0
        if max_grad_norm > 0:
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
            c = min(1.0, max_grad_norm / (norm + eps))
        for i in range(len(xs)):
            g = c * grads[i]
            if k == 1:
                prev[i] = g
            d = g - prev[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * d
            u = g + b2 * d
            n[i] = b3 * n[i] + (1 - b3) * u * u
            den = n[i].sqrt() / math.sqrt(1 - b3**k) + eps
            direction = m[i] / (1 - b1**k) + b2 * v[i] / (1 - b2**k)
            if no_prox:
                xs[i] = xs[i] * (1 - lr * wd) - lr * direction / den
            else:
                xs[i] = (xs[i] - lr * direction / den) / (1 + lr * wd)
            prev[i] = g
        traj.append([x.clone() for x in xs])
    return traj


def noisy_problem(seed: int, shapes=((3, 4), (5,), (1,), (2, 3, 2))):
    """A multi-tensor quadratic with seeded gradient noise: grad = a * x + noise_k."""
    gen = torch.Generator().manual_seed(seed)
    x0 = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
    a = [torch.rand(s, generator=gen, dtype=F64) * 3 for s in shapes]
    noise = [[torch.randn(s, generator=gen, dtype=F64) * 0.3 for s in shapes] for _ in range(80)]

    def grad_fn(xs, k):
        return [ai * x + noise[k - 1][i] for i, (ai, x) in enumerate(zip(a, xs, strict=True))]

    return x0, grad_fn


def run_ours(x0, grad_fn, steps, **kw):
    ps = [x.clone().requires_grad_() for x in x0]
    opt = Adan(ps, **kw)
    for k in range(1, steps + 1):
        for p, g in zip(ps, grad_fn([p.detach() for p in ps], k), strict=True):
            p.grad = g.clone()
        opt.step()
    return ps, opt


@pytest.mark.parametrize("path", paths(*PATHS))
@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_trajectories(case: str, path: str) -> None:
    kw, expected = GOLDEN[case]
    got = quad_trajectory({**kw, **PATHS[path]})
    torch.testing.assert_close(torch.tensor(got, dtype=F64), torch.tensor(expected, dtype=F64),
                               atol=1e-11, rtol=0)  # fmt: skip


@pytest.mark.parametrize("case", list(GOLDEN))
def test_reference_matches_golden(case: str) -> None:
    kw, expected = GOLDEN[case]
    kw = dict(kw)
    ref_kw = dict(lr=kw["lr"], betas=kw.get("betas", (0.98, 0.92, 0.99)),
                  wd=kw.get("weight_decay", 0.0), no_prox=kw.get("no_prox", False),
                  max_grad_norm=kw.get("max_grad_norm", 0.0))  # fmt: skip
    traj = reference_adan(
        [torch.tensor([1.0, -2.0], dtype=F64)], lambda xs, k: [A * xs[0]], 5, **ref_kw
    )
    got = torch.stack([t[0] for t in traj])
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), atol=1e-11, rtol=0)


@pytest.mark.parametrize("path", paths("single", "foreach", "fused"))
@pytest.mark.parametrize(
    "hp", [dict(wd=0.05), dict(wd=0.05, no_prox=True), dict(max_grad_norm=0.7)],
    ids=["prox", "no_prox", "clip"],
)  # fmt: skip
def test_matches_reference_60_steps(hp: dict, path: str) -> None:
    x0, grad_fn = noisy_problem(1)
    ref = reference_adan(x0, grad_fn, 60, lr=0.02, **hp)[-1]
    kw = dict(lr=0.02, weight_decay=hp.get("wd", 0.0), no_prox=hp.get("no_prox", False),
              max_grad_norm=hp.get("max_grad_norm", 0.0), **PATHS[path])  # fmt: skip
    ps, _ = run_ours(x0, grad_fn, 60, **kw)
    for p, r in zip(ps, ref, strict=True):
        torch.testing.assert_close(p.detach(), r, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "hp", [dict(), dict(weight_decay=0.05), dict(weight_decay=0.05, no_prox=True),
           dict(max_grad_norm=0.7)], ids=["plain", "prox", "no_prox", "clip"],
)  # fmt: skip
def test_matches_pytorch_optimizer(hp: dict) -> None:
    po = pytest.importorskip("pytorch_optimizer")
    x0, grad_fn = noisy_problem(2)
    ours, _ = run_ours(x0, grad_fn, 60, lr=0.02, **hp)
    theirs = [x.clone().requires_grad_() for x in x0]
    peer = po.Adan(theirs, lr=0.02, weight_decay=hp.get("weight_decay", 0.0),
                   weight_decouple=hp.get("no_prox", False),
                   max_grad_norm=hp.get("max_grad_norm", 0.0), foreach=False)  # fmt: skip
    for k in range(1, 61):
        for p, g in zip(theirs, grad_fn([p.detach() for p in theirs], k), strict=True):
            p.grad = g.clone()
        peer.step()
    tol = 1e-7 if "max_grad_norm" in hp else 1e-12  # the peer sums the clip norm in fp32
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=tol, rtol=0)


def test_step1_closed_form_and_step2_by_hand() -> None:
    lr, wd, eps = 0.1, 0.1, 1e-8
    x0 = torch.tensor([0.3, -1.2, 2.0, 1e-3], dtype=F64)
    x = x0.clone().requires_grad_()
    opt = Adan([x], lr=lr, weight_decay=wd, eps=eps)
    g1 = torch.tensor([1.0, -0.5, 2.0, 3e-4], dtype=F64)
    x.grad = g1.clone()
    opt.step()
    want1 = (x0 - lr * g1 / (g1.abs() + eps)) / (1 + lr * wd)
    torch.testing.assert_close(x.detach(), want1, atol=1e-15, rtol=1e-15)
    assert torch.equal(opt.state[x]["exp_avg_diff"], torch.zeros_like(x0))
    g2 = torch.tensor([0.2, 0.1, -1.0, 1e-4], dtype=F64)
    x.grad = g2.clone()
    opt.step()
    b1, b2, b3 = 0.98, 0.92, 0.99
    d = g2 - g1
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = (1 - b2) * d
    n = b3 * (1 - b3) * g1**2 + (1 - b3) * (g2 + b2 * d) ** 2
    den = n.sqrt() / math.sqrt(1 - b3**2) + eps
    want2 = (want1 - lr * (m / (1 - b1**2) + b2 * v / (1 - b2**2)) / den) / (1 + lr * wd)
    torch.testing.assert_close(x.detach(), want2, atol=1e-14, rtol=1e-13)


def test_gradient_scale_invariance() -> None:
    x0, grad_fn = noisy_problem(3)
    base, _ = run_ours(x0, grad_fn, 30, lr=0.01, eps=1e-12)
    scaled, _ = run_ours(
        x0, lambda xs, k: [1000 * g for g in grad_fn(xs, k)], 30, lr=0.01, eps=1e-12
    )
    for a, b in zip(base, scaled, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("path", paths("single", "foreach", "fused"))
def test_state_dict_round_trip_bit_identical(path: str) -> None:
    x0, grad_fn = noisy_problem(4)
    kw = dict(lr=0.03, weight_decay=0.02, max_grad_norm=1.0, **PATHS[path])
    ps, opt = run_ours(x0, grad_fn, 7, **kw)
    sd = copy.deepcopy(opt.state_dict())
    clones = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = Adan(clones, **kw)
    opt2.load_state_dict(pickle.loads(pickle.dumps(sd)))
    for k in range(8, 15):
        for group in (ps, clones):
            for p, g in zip(group, grad_fn([q.detach() for q in group], k), strict=True):
                p.grad = g.clone()
        opt.step()
        opt2.step()
    for a, b in zip(ps, clones, strict=True):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad", "step"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key]), key
    assert opt2.state[clones[0]]["step"].device.type == "cpu"
    assert opt2.state[clones[0]]["step"].dtype == torch.float32


def test_state_dict_casts_to_param_dtype_and_deepcopy() -> None:
    x0, grad_fn = noisy_problem(5)
    ps, opt = run_ours(x0, grad_fn, 3, lr=0.01)
    p32 = [p.detach().float().requires_grad_() for p in ps]
    opt32 = Adan(p32, lr=0.01)
    opt32.load_state_dict(opt.state_dict())
    for p in p32:
        assert opt32.state[p]["exp_avg"].dtype == torch.float32
        assert opt32.state[p]["step"].dtype == torch.float32
    dup = copy.deepcopy(opt)
    assert torch.equal(
        dup.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_legacy_neg_pre_grad_and_group_step_load() -> None:
    x0, grad_fn = noisy_problem(6)
    ps, opt = run_ours(x0, grad_fn, 4, lr=0.01)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():  # make it look like an official checkpoint
        st["neg_pre_grad"] = -st.pop("prev_grad")
        del st["step"]
    for g in sd["param_groups"]:
        g["step"] = 4
        for key in ("shared_step", "state_dtype", "fused", "differentiable"):
            g.pop(key)
    opt2 = Adan([p.detach().clone().requires_grad_() for p in ps], lr=0.01)
    opt2.load_state_dict(sd)
    for i, p in enumerate(opt2.param_groups[0]["params"]):
        assert torch.equal(opt2.state[p]["prev_grad"], opt.state[ps[i]]["prev_grad"])
        assert float(opt2.state[p]["step"]) == 4.0
    assert opt2.param_groups[0]["shared_step"] is False  # back-filled


def test_setstate_backfills_flags() -> None:
    x = torch.zeros(2, requires_grad=True)
    opt = Adan([x])
    state = opt.__getstate__()
    for key in ("foreach", "fused", "maximize", "max_grad_norm", "differentiable", "no_prox"):
        del state["param_groups"][0][key]
    fresh = Adan.__new__(Adan)
    fresh.__setstate__(state)
    g = fresh.param_groups[0]
    assert (g["foreach"], g["fused"], g["maximize"], g["max_grad_norm"]) == (None, None, False, 0.0)
    assert g["differentiable"] is False and g["no_prox"] is False


@pytest.mark.parametrize("path", paths("single", "foreach", "fused"))
def test_restart_equals_fresh_optimizer(path: str) -> None:
    x0, grad_fn = noisy_problem(7)
    ps, opt = run_ours(x0, grad_fn, 6, lr=0.05, weight_decay=0.01, **PATHS[path])
    opt.restart_opt()
    fresh = [p.detach().clone().requires_grad_() for p in ps]
    opt_f = Adan(fresh, lr=0.05, weight_decay=0.01, **PATHS[path])
    for k in range(7, 10):
        for group, o in ((ps, opt), (fresh, opt_f)):
            for p, g in zip(group, grad_fn([q.detach() for q in group], k), strict=True):
                p.grad = g.clone()
            o.step()
    for a, b in zip(ps, fresh, strict=True):
        assert torch.equal(a, b)
