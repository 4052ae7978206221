"""The torch.compile path: no graph break in the chunk step, one graph for every T, equal to eager."""

from __future__ import annotations

import pytest
import torch
from ops.lact.lact_cases import assert_states_close, make_inputs, scalar_loss
from torch._dynamo.testing import CompileCounter

from batchcraft.ops.lact import chunk_lact, lact, resolve_impl
from batchcraft.ops.lact.compiled import compiled_lact, compiled_step
from batchcraft.ops.lact.options import LaCTOptions


def _step_args(N: int = 2, C: int = 8, D: int = 6, Dh: int = 10) -> tuple[object, ...]:
    g = torch.Generator().manual_seed(0)
    w = tuple(torch.randn(N, *s, generator=g) for s in ((Dh, D), (Dh, D), (D, Dh)))
    rho = tuple(t.norm(dim=-1, keepdim=True) for t in w)
    mom = tuple(torch.zeros_like(t) for t in w)
    q, k, v = (torch.randn(N, C, D, generator=g) for _ in range(3))
    lr = torch.rand(N, C, 3, generator=g)
    scaled = (lr[..., :1] * k, lr[..., 1:2] * k, lr[..., 2:] * v)
    beta = torch.rand(N, C, 1, generator=g)
    return (w, None, mom, rho, q, k, v, lr, scaled, beta)


@pytest.mark.parametrize("muon", [None, "tuned"], ids=["gd", "muon"])
def test_chunk_step_traces_without_graph_breaks(muon: str | None) -> None:
    from batchcraft.ops.lact.chunk import _ChunkBackend

    be = _ChunkBackend(LaCTOptions(use_muon=muon is not None, muon=muon or "tuned"))
    torch._dynamo.reset()
    explain = torch._dynamo.explain(be._step)(*_step_args())
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_second_sequence_length_does_not_recompile() -> None:
    counter = CompileCounter()
    frames = []
    for T in (24, 43, 61):  # 3, 5, 7 chunks; tails of 0, 3, 5 tokens
        inp = make_inputs(1, T, 2, 6, 10, dtype=torch.float32, seed=T)
        o, _ = compiled_lact(
            inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=8, beta=inp.beta, compile_backend=counter
        )
        ref, _ = chunk_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=8, beta=inp.beta)
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-6)
        frames.append(counter.frame_count)
    assert frames[0] >= 1
    assert frames[1] == frames[0] == frames[2], frames  # new T: no new graph


def test_compiled_muon_equals_chunk_eager_backend() -> None:
    inp = make_inputs(1, 21, 1, 5, 7, dtype=torch.float32, seed=5)
    kw = dict(chunk_size=8, muon="classic", muon_steps=3)
    o, st = compiled_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, compile_backend="eager", **kw)
    o2, st2 = chunk_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, **kw)
    torch.testing.assert_close(o, o2, rtol=1e-5, atol=1e-6)
    assert_states_close(st, st2, rtol=1e-5, atol=1e-6)


def test_compiled_equals_chunk_forward_grads_state_aot_eager() -> None:
    inp = make_inputs(1, 21, 2, 5, 7, dtype=torch.float32, seed=3, requires_grad=True)
    kw = dict(chunk_size=8, beta=inp.beta, weight_norm="pre")
    leaves = inp.leaves()
    o, st = compiled_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, compile_backend="aot_eager", **kw)
    g = torch.autograd.grad(scalar_loss(o, st), leaves)
    o2, st2 = chunk_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, **kw)
    g2 = torch.autograd.grad(scalar_loss(o2, st2), leaves)
    torch.testing.assert_close(o, o2, rtol=1e-5, atol=1e-6)
    assert_states_close(st, st2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_step_is_cached_per_options() -> None:
    a = compiled_step(LaCTOptions(use_muon=True), backend="eager")
    assert compiled_step(LaCTOptions(use_muon=True), backend="eager") is a
    # options the step never reads do not recompile
    assert compiled_step(LaCTOptions(use_muon=True, chunk_size=7, check=True), backend="eager") is a
    assert compiled_step(LaCTOptions(use_muon=False), backend="eager") is not a


def test_dispatch_compiled_by_name() -> None:
    assert resolve_impl("compiled", torch.zeros(1, 2, 1, 4)) is compiled_lact


@pytest.mark.slow
def test_compiled_inductor_equals_chunk() -> None:
    inp = make_inputs(1, 40, 2, 16, 16, dtype=torch.float32, seed=4, requires_grad=True)
    o, st = lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=16, impl="compiled", beta=inp.beta)
    o2, st2 = chunk_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=16, beta=inp.beta)
    torch.testing.assert_close(o, o2, rtol=1e-4, atol=1e-5)
    g = torch.autograd.grad(scalar_loss(o, st), inp.leaves())
    g2 = torch.autograd.grad(scalar_loss(o2, st2), inp.leaves())
    for a, b in zip(g, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
