"""The fused LN-LSTM / LN-GRU loops == the per-step reference: outputs, final states, every gradient.

Covers awkward shapes (T = 1, B = 1, H = 1, odd sizes), the backward's blocking (one step per
block, blocks that do not divide T, one block), reverse, variable lengths, no biases, a
non-default eps, and fp32 against the fp64 reference.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import assert_close, rel_rms

import batchcraft.ops.recurrent.fused as fused
from batchcraft.ops.recurrent import GRUParams, LSTMParams, ln_gru, ln_lstm


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(mode: str, inp: int, hid: int, seed: int, bias: bool, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, shift: float = 0.0) -> torch.Tensor:
        t = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5 + shift
        return t.to(dtype).requires_grad_(True)

    gates = 4 if mode == "lstm" else 3
    kw: dict[str, torch.Tensor | None] = {
        "weight_ih": r(gates * hid, inp),
        "weight_hh": r(gates * hid, hid),
        "bias_ih": r(gates * hid) if bias else None,
        "bias_hh": r(gates * hid) if bias else None,
    }
    # distinct, non-trivial gains (around 1) and shifts for every LN
    groups = (
        (("ln_ih", 4), ("ln_hh", 4), ("ln_c", 1))
        if mode == "lstm"
        else (("ln_ih_rz", 2), ("ln_ih_n", 1), ("ln_hh_rz", 2), ("ln_hh_n", 1))
    )
    for name, units in groups:
        kw[f"{name}_weight"] = r(units * hid, shift=1.0)
        kw[f"{name}_bias"] = r(units * hid)
    return (LSTMParams if mode == "lstm" else GRUParams)(**kw)  # type: ignore[arg-type]


def _run(mode, x, state, p, impl, **kw):
    if mode == "lstm":
        out, (h, c) = ln_lstm(x, (state[0], state[1]), p, impl=impl, **kw)
        return out, h, c
    out, h = ln_gru(x, state[0], p, impl=impl, **kw)
    return out, h


def _outputs_and_grads(mode, x, state, p, impl, **kw):
    outs = _run(mode, x, state, p, impl, **kw)
    g = torch.Generator().manual_seed(123)
    # weights drawn in fp64 then cast, so fp32 and fp64 runs get the same loss
    loss = sum(
        (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outs
    )
    leaves = [x, *state, *p.tensors()]
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))


SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (5, 1, 3, 4),
    (7, 3, 5, 6),
    (13, 2, 1, 3),
    (9, 4, 7, 16),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}_B{}_I{}_H{}".format(*s))
@pytest.mark.parametrize("block", [1, 3, 1 << 20], ids=["block1", "block3", "oneblock"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_fused_equals_naive(shape, block, mode, monkeypatch) -> None:
    t_len, bsz, inp, hid = shape
    gates = 4 if mode == "lstm" else 3
    # BLOCK_ELEMS counts values of one [steps, B, G*H] tensor: give `block` steps per block
    monkeypatch.setattr(fused, "BLOCK_ELEMS", block * bsz * gates * hid)
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(t_len, bsz, inp, generator=g, dtype=torch.float64).requires_grad_(True)
    state = [
        torch.randn(bsz, hid, generator=g, dtype=torch.float64).requires_grad_(True)
        for _ in range(2 if mode == "lstm" else 1)
    ]
    p = _params(mode, inp, hid, seed=t_len * 7 + hid, bias=True, dtype=torch.float64)
    ref = _outputs_and_grads(mode, x, state, p, "naive")
    got = _outputs_and_grads(mode, x, state, p, "fused")
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"output/grad #{i}")


CASES = [  # (name, reverse, lengths, bias, eps)
    ("reverse", True, None, True, 1e-5),
    ("lengths", False, [7, 2, 5], True, 1e-5),
    ("lengths_reverse", True, [1, 7, 4], True, 1e-5),
    ("no_bias", False, None, False, 1e-5),
    ("eps_1e-2", False, None, True, 1e-2),
    ("eps_lengths_reverse", True, [3, 7, 6], True, 0.3),
]


@pytest.mark.parametrize(
    ("name", "reverse", "lengths", "bias", "eps"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("block", [2, 1 << 20], ids=["block2", "oneblock"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_fused_equals_naive_options(name, reverse, lengths, bias, eps, block, mode, monkeypatch):
    t_len, bsz, inp, hid = 7, 3, 5, 6
    gates = 4 if mode == "lstm" else 3
    monkeypatch.setattr(fused, "BLOCK_ELEMS", block * bsz * gates * hid)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(t_len, bsz, inp, generator=g, dtype=torch.float64).requires_grad_(True)
    state = [
        torch.randn(bsz, hid, generator=g, dtype=torch.float64).requires_grad_(True)
        for _ in range(2 if mode == "lstm" else 1)
    ]
    p = _params(mode, inp, hid, seed=11, bias=bias, dtype=torch.float64)
    kw = {
        "reverse": reverse,
        "eps": eps,
        "lengths": None if lengths is None else torch.tensor(lengths),
    }
    ref = _outputs_and_grads(mode, x, state, p, "naive", **kw)
    got = _outputs_and_grads(mode, x, state, p, "fused", **kw)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"{name}: output/grad #{i}")
    if lengths is not None:  # padded positions output exactly 0
        for b_i, n in enumerate(lengths):
            assert got[0][n:, b_i].abs().max() == 0 if n < t_len else True


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_fused_fp32_close_to_fp64_reference(mode) -> None:
    """fp32 fast path (tanh via sigmoid identities) stays close to the fp64 reference."""
    t_len, bsz, inp, hid = 20, 4, 8, 12
    g = torch.Generator().manual_seed(2)
    x64 = torch.randn(t_len, bsz, inp, generator=g, dtype=torch.float64)
    p64 = _params(mode, inp, hid, seed=3, bias=True, dtype=torch.float64)
    p32 = dataclasses.replace(
        p64, **{f.name: getattr(p64, f.name).detach().float().requires_grad_(True)
                for f in dataclasses.fields(p64)}
    )  # fmt: skip
    x32 = x64.float().requires_grad_(True)
    x64.requires_grad_(True)
    s64 = [
        torch.randn(bsz, hid, generator=g, dtype=torch.float64)
        for _ in range(2 if mode == "lstm" else 1)
    ]
    s32 = [s.float().requires_grad_(True) for s in s64]
    ref = _outputs_and_grads(mode, x64, [s.requires_grad_(True) for s in s64], p64, "naive")
    got = _outputs_and_grads(mode, x32, s32, p32, "fused")
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert rel_rms(b, a) < 1e-5, f"output/grad #{i}: relative RMS {rel_rms(b, a):.2e}"


def test_fused_saves_no_graph_inside_the_loop() -> None:
    """The loop is one autograd node: the output's grad_fn is the fused Function."""
    p = _params("lstm", 3, 4, seed=0, bias=True, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = ln_lstm(x, (torch.zeros(2, 4, dtype=torch.float64),) * 2, p, impl="fused")
    assert type(out.grad_fn).__name__ == "_LNLSTMLoopBackward"
