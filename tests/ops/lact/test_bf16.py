"""The bf16 path (fp32 state and lrs, bf16 matmuls and Newton-Schulz) against the fp32 reference.

Tolerances (relative RMS error ``||a - b|| / ||a||``, documented in docs/lact_op.md):
no Muon: output, gradients and final weights <= 2e-2; Muon with full-rank updates
(C >= max(D, Dh)): output and weights <= 5e-2, gradients <= 0.35 (the beta gradient, a small
difference of large terms through NS, is the loosest; q/k/v/weight gradients are ~5e-2). With C < D the update has rank
< D and Newton-Schulz lifts bf16 noise in its null space to O(1): no useful bound there.
"""

from __future__ import annotations

import pytest
import torch
from helpers import rel_rms
from ops.lact.lact_cases import make_inputs, scalar_loss

from batchcraft.ops.lact import FastWeights, LaCTState, chunk_lact, lact, resolve_impl
from batchcraft.ops.lact.bf16 import bf16_lact, mixed_precision

CASES = {
    "post-mom-B2-T70-D32-Dh48-C16": dict(shape=(2, 70, 2, 32, 48, 16), tol=(2e-2, 2e-2)),
    "pre-T45-D20-Dh12-C8": dict(shape=(1, 45, 1, 20, 12, 8), weight_norm="pre", tol=(2e-2, 2e-2)),
    "muon-fullrank-T130-D24-Dh32-C64": dict(
        shape=(1, 130, 1, 24, 32, 64), muon="tuned", tol=(5e-2, 0.35)
    ),
}


def _bf16_leaves(inp_leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    q, k, v, *rest = inp_leaves
    return [t.detach().bfloat16().requires_grad_() for t in (q, k, v)] + [
        t.detach().requires_grad_() for t in rest
    ]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bf16_close_to_fp32_reference(case: str) -> None:
    kw = dict(CASES[case])
    B, T, H, D, Dh, C = kw.pop("shape")  # type: ignore[misc]
    tol_o, tol_g = kw.pop("tol")  # type: ignore[misc]
    inp = make_inputs(B, T, H, D, Dh, dtype=torch.float32, seed=7)
    for t in (inp.q, inp.k, inp.v):  # both paths see the same bf16-representable inputs
        t.copy_(t.bfloat16().float())
    ref = [t.requires_grad_() for t in inp.leaves()]
    o, st = chunk_lact(*ref[:4], FastWeights(*ref[5:]), chunk_size=C, beta=ref[4], **kw)
    g = torch.autograd.grad(scalar_loss(o, st), ref)
    low = _bf16_leaves(ref)
    o2, st2 = lact(*low[:4], FastWeights(*low[5:]), chunk_size=C, beta=low[4], **kw)
    assert o2.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in st2.tensors().values())
    g2 = torch.autograd.grad(scalar_loss(o2.float(), st2), low)
    assert rel_rms(o, o2) < tol_o
    for name in ("gate", "up", "down"):
        assert rel_rms(getattr(st.weights, name), getattr(st2.weights, name)) < tol_o, name
    for i, (a, b) in enumerate(zip(g, g2, strict=True)):
        assert rel_rms(a, b) < tol_g, (i, rel_rms(a, b))
    # the bf16 path really rounds: not bit-identical to fp32
    assert rel_rms(o, o2) > 1e-5


def test_bf16_differs_from_pure_bf16_chunk_by_keeping_state_fp32() -> None:
    """impl='chunk' on bf16 runs everything in bf16 (weights too); auto keeps the state fp32."""
    inp = make_inputs(1, 64, 1, 16, 16, dtype=torch.float32, seed=8)
    ref, _ = chunk_lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=8)
    lowq = [t.bfloat16() for t in (inp.q, inp.k, inp.v)]
    w16 = FastWeights(*(t.bfloat16() for t in inp.w))  # type: ignore[union-attr]
    pure, st_pure = lact(*lowq, inp.lr.bfloat16(), w16, chunk_size=8, impl="chunk")
    mixed, st_mixed = lact(*lowq, inp.lr, w16, chunk_size=8)
    assert st_pure.weights.down.dtype == torch.bfloat16
    assert st_mixed.weights.down.dtype == torch.float32
    assert rel_rms(ref, mixed) < rel_rms(ref, pure)


def test_bf16_streaming_continues_from_fp32_state() -> None:
    inp = make_inputs(1, 40, 2, 8, 8, dtype=torch.float32, seed=9)
    x = [t.bfloat16() for t in (inp.q, inp.k, inp.v)]
    o, st = bf16_lact(*x, inp.lr, inp.w, chunk_size=8, beta=inp.beta)
    o1, s1 = bf16_lact(
        *(t[:, :19] for t in x), inp.lr[:, :19], inp.w, chunk_size=8, beta=inp.beta[:, :19]
    )
    assert isinstance(s1, LaCTState) and s1.num_pending == 3
    o2, s2 = bf16_lact(
        *(t[:, 19:] for t in x), inp.lr[:, 19:], s1, chunk_size=8, beta=inp.beta[:, 19:]
    )
    torch.testing.assert_close(torch.cat([o1, o2], 1), o, rtol=2e-2, atol=2e-2)
    # the pending chunk is updated by the unfused path: bf16 rounding differs slightly
    assert rel_rms(st.weights.down, s2.weights.down) < 1e-2


def test_dispatch_picks_bf16_for_low_precision_inputs() -> None:
    q = torch.zeros(1, 4, 1, 8, dtype=torch.bfloat16)
    assert resolve_impl("auto", q) is bf16_lact
    assert resolve_impl("bf16", q.float()) is bf16_lact
    assert resolve_impl("auto", q.float()) is chunk_lact
    assert resolve_impl("chunk", q) is chunk_lact


def test_mixed_precision_rejects_fp32_matmul_dtype() -> None:
    with pytest.raises(ValueError, match=r"bfloat16 or torch\.float16"):
        mixed_precision(chunk_lact, mm_dtype=torch.float32)


def test_bf16_rejects_non_tensor_input() -> None:
    inp = make_inputs(1, 4, 1, 4, 4, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"q must be a torch\.Tensor"):
        bf16_lact([1.0], inp.k, inp.v, inp.lr, inp.w, chunk_size=4)  # type: ignore[arg-type]


def test_dispatch_under_autocast_picks_bf16() -> None:
    q = torch.zeros(1, 4, 1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_impl("auto", q) is bf16_lact
        assert resolve_impl("chunk", q) is chunk_lact  # explicit choices are kept


def test_layer_under_autocast_close_to_fp32() -> None:
    """The LM layer run under bf16 autocast takes the bf16 op path (mixed q/k/v dtypes included)."""
    from batchcraft.nn.lact import LaCTLayer

    torch.manual_seed(0)  # nn.Module init only; inputs use an explicit generator
    layer = LaCTLayer(32, 2, chunk_size=8, window_size=0, init="full")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 30, 32, generator=g)
    ref, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = layer(x)
    assert 1e-5 < rel_rms(ref, low.float()) < 3e-2
