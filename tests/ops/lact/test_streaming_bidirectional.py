"""Streaming bidirectional update (chunked inner-gradient accumulation) == one-shot update."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close

from batchcraft.ops.lact import FastWeights, lact
from batchcraft.ops.lact.streaming import iter_chunks, streaming_bidirectional, streaming_update

CASES = [
    # (B, N, H, D, Dh, chunk, muon, norm, fast_weight, beta)
    (1, 37, 1, 8, 8, 5, None, "post", "swiglu", False),
    (2, 64, 2, 8, 16, 64, "classic", "post", "swiglu", False),
    (1, 50, 2, 6, 12, 7, "tuned", "pre", "swiglu", True),
    (2, 33, 1, 8, 8, 1, None, None, "linear", False),
    (1, 41, 3, 4, 8, 100, "classic", "post", "swiglu", True),
]
IDS = [f"B{c[0]}-N{c[1]}-H{c[2]}-D{c[3]}-C{c[5]}-{c[6]}-{c[7]}-{c[8]}-beta{c[9]}" for c in CASES]


def _inputs(B: int, N: int, H: int, D: int, Dh: int, fw: str, beta: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    q, k, v = (torch.randn(B, N, H, D, generator=g, dtype=dt) for _ in range(3))
    lr = torch.rand(B, N, H, 3, generator=g, dtype=dt) * 0.1
    if fw == "linear":
        w0 = FastWeights(None, None, torch.randn(H, D, D, generator=g, dtype=dt) / D**0.5)
    else:
        w0 = FastWeights(
            torch.randn(H, Dh, D, generator=g, dtype=dt) / D**0.5,
            torch.randn(H, Dh, D, generator=g, dtype=dt) / D**0.5,
            torch.randn(H, D, Dh, generator=g, dtype=dt) / Dh**0.5,
        )
    b = torch.rand(B, N, H, generator=g, dtype=dt) if beta else None
    return q, k, v, lr, w0, b


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_streaming_equals_one_shot(case: tuple) -> None:
    B, N, H, D, Dh, C, muon, norm, fw, use_beta = case
    q, k, v, lr, w0, beta = _inputs(B, N, H, D, Dh, fw, use_beta)
    o_ref, st = lact(
        q,
        k,
        v,
        lr,
        w0,
        chunk_size=N,
        schedule="bidirectional",
        beta=beta,
        muon=muon,
        weight_norm=norm,
        fast_weight=fw,
        impl="naive",
    )
    o, w = streaming_bidirectional(
        q, k, v, lr, w0, chunk_size=C, beta=beta, muon=muon, weight_norm=norm, fast_weight=fw
    )
    assert_close(o, o_ref, rtol=1e-9, atol=1e-10, msg="outputs")
    for name, a, b in zip(("gate", "up", "down"), w, st.weights, strict=True):
        if a is None:
            assert b is None or fw == "linear"
            continue
        assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_streaming_gradients_match() -> None:
    q, k, v, lr, w0, _ = _inputs(1, 23, 2, 4, 8, "swiglu", False)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lr)]
    o1, _ = lact(*leaves, w0, chunk_size=23, schedule="bidirectional", muon="classic", impl="naive")
    g1 = torch.autograd.grad(o1.square().sum(), leaves)
    o2, _ = streaming_bidirectional(*leaves, w0, chunk_size=6, muon="classic")
    g2 = torch.autograd.grad(o2.square().sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "lr"], g2, g1, strict=True):
        assert_close(a, b, rtol=1e-8, atol=1e-10, msg=f"grad {name}")


def test_chunking_changes_nothing_but_memory() -> None:
    """Any chunk size gives the same weights (chunks of 1 token up to all tokens)."""
    _, k, v, lr, w0, _ = _inputs(1, 19, 1, 4, 4, "swiglu", False)
    ws = [streaming_update(iter_chunks(k, v, lr, chunk_size=c), w0) for c in (1, 4, 19)]
    for w in ws[1:]:
        assert_close(w.down, ws[0].down, rtol=1e-10, atol=1e-12)


def test_errors() -> None:
    _, k, v, lr, w0, _ = _inputs(1, 8, 1, 4, 4, "swiglu", False)
    with pytest.raises(ValueError, match="at least one token"):
        streaming_update([], w0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        list(iter_chunks(k, v, lr, chunk_size=0))
    with pytest.raises(ValueError, match="lr \\[B, S, H, 3\\]"):
        streaming_update([(k, v, lr[..., :2])], w0)
    with pytest.raises(ValueError, match="weight_norm"):
        streaming_update([(k, v, lr)], w0, weight_norm="mid")
