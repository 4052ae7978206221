"""State in / state out (spec test 8), cu_seqlens (17), schedules (§5)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ops.lact.lact_cases import Inputs, assert_states_close, make_inputs, run

from batchcraft.ops.lact import (
    FastWeights,
    LaCTState,
    TTTOp,
    bidirectional_schedule,
    causal_schedule,
    lact,
    strided_schedule,
    swiglu_apply,
)

KW = {"muon": "tuned", "weight_norm": "pre"}


def _stream(
    inp: Inputs, cuts: list[int], C: int, impl: str = "chunk", **kw: object
) -> tuple[torch.Tensor, LaCTState]:
    state: LaCTState | FastWeights = inp.w
    outs = []
    bounds = [0, *cuts, inp.q.shape[1]]
    for s, e in itertools.pairwise(bounds):
        sl = slice(s, e)
        o, state = lact(
            inp.q[:, sl],
            inp.k[:, sl],
            inp.v[:, sl],
            inp.lr[:, sl],
            state,
            chunk_size=C,
            beta=inp.beta[:, sl],
            impl=impl,
            **kw,
        )  # type: ignore[arg-type]
        outs.append(o)
    assert isinstance(state, LaCTState)
    return torch.cat(outs, dim=1), state


@given(cuts=st.lists(st.integers(1, 22), max_size=5, unique=True))
@settings(max_examples=15, deadline=None)
def test_any_split_equals_one_call(cuts: list[int]) -> None:
    inp = make_inputs(2, 23, 2, 4, 8)
    o, s = run("chunk", inp, C=5, use_beta=True, **KW)
    o2, s2 = _stream(inp, sorted(cuts), C=5, **KW)
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)
    assert_states_close(s2, s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_token_by_token_equals_one_call(impl: str) -> None:
    T = 13
    inp = make_inputs(1, T, 2, 4, 8)
    o, s = run(impl, inp, C=4, use_beta=True, **KW)
    o2, s2 = _stream(inp, list(range(1, T)), C=4, impl=impl, **KW)
    torch.testing.assert_close(o2, o, rtol=1e-12, atol=1e-12)
    assert_states_close(s2, s, rtol=1e-12, atol=1e-12)
    assert (
        s2.num_pending == T % 4 and s2.pending_k is not None and s2.pending_k.shape == (1, 1, 2, 4)
    )


def test_streaming_fp32() -> None:
    inp = make_inputs(1, 40, 2, 8, 16, dtype=torch.float32)
    # (Muon is left off here: its NS slope near 0 amplifies fp32 rounding of differently fused matmuls)
    o, s = run("chunk", inp, C=8, use_beta=True)
    o2, s2 = _stream(inp, [3, 8, 21, 22], C=8)
    torch.testing.assert_close(o2, o, rtol=1e-6, atol=1e-6)
    assert_states_close(s2, s, rtol=1e-6, atol=1e-6)


def test_state_helpers() -> None:
    inp = make_inputs(1, 10, 2, 4, 8, requires_grad=True)
    _, s = run("chunk", inp, C=4, use_beta=True)
    d, c = s.detach(), s.clone()
    assert all(not t.requires_grad for t in d.tensors().values())
    assert all(t.requires_grad for t in c.tensors().values())
    assert d.tensors().keys() == s.tensors().keys() and d.num_tokens == 10 and d.num_pending == 2
    fresh = LaCTState.init(inp.w, "pre", momentum=True, batch_size=3)
    assert (
        fresh.weights.down.shape == (3, 2, 4, 8)
        and fresh.accum is not None
        and fresh.momentum is not None
    )
    torch.testing.assert_close(fresh.row_norms.gate[0], inp.w.gate.norm(dim=-1, keepdim=True))  # type: ignore[union-attr]


def test_cu_seqlens_equals_separate_calls() -> None:
    cu = [0, 5, 14, 23]
    inp = make_inputs(1, 23, 2, 4, 8)
    o, s = run("chunk", inp, C=4, use_beta=True, cu_seqlens=torch.tensor(cu), **KW)
    for a, b in itertools.pairwise(cu):
        sl = slice(a, b)
        oi, si = lact(
            inp.q[:, sl],
            inp.k[:, sl],
            inp.v[:, sl],
            inp.lr[:, sl],
            inp.w,
            chunk_size=4,
            beta=inp.beta[:, sl],
            **KW,
        )  # type: ignore[arg-type]
        torch.testing.assert_close(o[:, sl], oi, rtol=0, atol=1e-14)
    assert_states_close(s, si, rtol=0, atol=1e-14)  # the last document's state
    on, _ = run("naive", inp, C=4, use_beta=True, cu_seqlens=cu, **KW)
    torch.testing.assert_close(on, o, rtol=1e-10, atol=1e-10)


def test_explicit_causal_schedule_equals_causal() -> None:
    inp = make_inputs(1, 18, 2, 4, 8)
    o, s = run("chunk", inp, C=4, use_beta=True)
    o2, s2 = run("chunk", inp, C=4, use_beta=True, schedule=causal_schedule(18, 4))
    torch.testing.assert_close(o2, o, rtol=0, atol=1e-14)
    for a, b in zip(s2.weights, s.weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_schedule_builders() -> None:
    assert causal_schedule(10, 4) == [
        TTTOp("apply_update", 0, 4),
        TTTOp("apply_update", 4, 8),
        TTTOp("apply", 8, 10),
    ]
    assert causal_schedule(8, 4)[-1] == TTTOp("apply_update", 4, 8)
    assert bidirectional_schedule(3, 5) == [TTTOp("update", 0, 3), TTTOp("apply", 0, 5)]
    assert strided_schedule([0, 4, 8, 12, 16]) == [
        TTTOp("apply", 0, 4),
        TTTOp("update", 4, 8),
        TTTOp("apply", 4, 12),
        TTTOp("update", 12, 16),
        TTTOp("apply", 12, 16),
    ]
    with pytest.raises(ValueError, match="strictly increasing"):
        strided_schedule([0, 4, 4, 8])


def test_strided_schedule_semantics() -> None:
    inp = make_inputs(1, 16, 1, 4, 8)
    ops = strided_schedule([0, 4, 8, 12, 16])
    o, _s = run("chunk", inp, C=4, schedule=ops)
    w0 = FastWeights(*[t.expand(1, *t.shape) for t in inp.w])  # type: ignore[union-attr]
    torch.testing.assert_close(
        o[:, :4], swiglu_apply(w0, inp.q[:, :4]), rtol=0, atol=1e-14
    )  # noisy_0 reads W0
    # noisy_1 reads the weights after clean_0 only: perturbing clean_1 keys changes nothing before 12
    k2 = inp.k.clone()
    k2[:, 12:] += 1.0
    o2, _ = run("chunk", Inputs(inp.q, k2, inp.v, inp.lr, inp.beta, inp.w), C=4, schedule=ops)
    torch.testing.assert_close(o2[:, :12], o[:, :12], rtol=0, atol=0)
    assert float((o2[:, 12:] - o[:, 12:]).abs().max()) > 0
    on, _ = run("naive", inp, C=4, schedule=ops)
    torch.testing.assert_close(on, o, rtol=1e-12, atol=1e-12)


def test_unapplied_tokens_are_zero() -> None:
    inp = make_inputs(1, 10, 1, 4, 8)
    o, _ = run("chunk", inp, C=4, schedule=[TTTOp("update", 0, 6), TTTOp("apply", 6, 9)])
    assert float(o[:, :6].abs().max()) == 0 and float(o[:, 9:].abs().max()) == 0
    assert float(o[:, 6:9].abs().min()) > 0
