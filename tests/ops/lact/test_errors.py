"""Bad input raises ValueError/TypeError saying what is right."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from ops.lact.lact_cases import make_inputs

from batchcraft.ops.lact import FastWeights, LaCTState, TTTOp, lact, resolve_impl


def _call(**over: Any) -> Any:
    inp = make_inputs(1, 8, 2, 4, 8)
    args: dict[str, Any] = {
        "q": inp.q,
        "k": inp.k,
        "v": inp.v,
        "lr": inp.lr,
        "state": inp.w,
        "chunk_size": 4,
    }
    args.update(over)
    return lact(**args)


CASES = [
    ({"q": torch.randn(8, 2, 4, dtype=torch.float64)}, ValueError, r"\[B, T, H, D\]"),
    ({"k": torch.randn(1, 8, 2, 5, dtype=torch.float64)}, ValueError, "k must have q's shape"),
    ({"v": torch.randn(1, 8, 2, 4)}, TypeError, "v must have q's dtype"),
    ({"q": torch.ones(1, 8, 2, 4, dtype=torch.long)}, TypeError, "floating-point"),
    ({"lr": torch.rand(1, 8, 2, 1, dtype=torch.float64)}, ValueError, r"lr must be \[B, T, H, 3\]"),
    (
        {"beta": torch.rand(1, 8, 2, 1, dtype=torch.float64)},
        ValueError,
        r"beta must be \[B, T, H\]",
    ),
    ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
    ({"chunk_size": 2.0}, ValueError, "chunk_size must be a positive int"),
    ({"muon": "adam"}, ValueError, "muon must be None, 'tuned' or 'classic'"),
    ({"muon": "tuned", "muon_steps": 7}, ValueError, "muon_steps must be <= 5"),
    ({"weight_norm": "mid"}, ValueError, "weight_norm must be"),
    ({"fast_weight": "mlp"}, ValueError, "fast_weight must be"),
    ({"loss": "l1"}, ValueError, "loss must be one of"),
    ({"inner_steps": 0}, ValueError, "inner_steps must be"),
    ({"impl": "cuda"}, ValueError, "impl must be one of"),
    ({"impl": "triton"}, ValueError, "impl='chunk'"),
    ({"schedule": "random"}, ValueError, "schedule must be"),
    ({"schedule": [TTTOp("apply", 4, 2)]}, ValueError, "0 <= start < end"),
    ({"schedule": [TTTOp("read", 0, 2)]}, ValueError, "kind must be one of"),
    ({"state": "weights"}, TypeError, "LaCTState or FastWeights"),
    ({"cu_seqlens": [0, 5, 7]}, ValueError, "cu_seqlens must be strictly increasing from 0 to T=8"),
]


@pytest.mark.parametrize(("over", "exc", "match"), CASES, ids=[c[2][:30] for c in CASES])
def test_bad_arguments(over: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        _call(**over)


def test_bad_weights() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    assert inp.w.gate is not None
    with pytest.raises(ValueError, match="leading dims"):
        _call(state=FastWeights(inp.w.gate[:1], inp.w.up[:1], inp.w.down[:1]))  # type: ignore[index]
    with pytest.raises(ValueError, match="to match down"):
        _call(state=FastWeights(inp.w.gate[..., :3], inp.w.up, inp.w.down))
    with pytest.raises(ValueError, match="needs gate and up"):
        _call(state=FastWeights(None, None, inp.w.down))
    with pytest.raises(ValueError, match="linear fast weights need down"):
        _call(fast_weight="linear")
    with pytest.raises(TypeError, match="fast weights must have q's dtype"):
        _call(state=FastWeights(*[t.float() for t in inp.w]))  # type: ignore[union-attr]


def test_check_flag_catches_non_finite() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    inp.k[0, 3, 1, 2] = float("nan")
    _call(k=inp.k)  # unchecked: runs
    with pytest.raises(ValueError, match="k contains NaN or inf"):
        _call(k=inp.k, check=True)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        _call(beta=torch.full((1, 8, 2), 1.5, dtype=torch.float64), check=True)


def test_state_misuse() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    _, s = lact(inp.q[:, :6], inp.k[:, :6], inp.v[:, :6], inp.lr[:, :6], inp.w, chunk_size=4)
    with pytest.raises(ValueError, match="weight_norm='post'"):
        _call(state=s, weight_norm="pre")
    with pytest.raises(ValueError, match="only the causal schedule"):
        _call(state=s, schedule="bidirectional")
    with pytest.raises(ValueError, match="chunk_size it was started with"):
        _call(state=s, chunk_size=5)
    with pytest.raises(ValueError, match="fresh state"):
        _call(state=s, cu_seqlens=[0, 8])
    _, sm = lact(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=4, beta=inp.beta)
    with pytest.raises(ValueError, match="pass beta"):
        _call(state=sm)
    with pytest.raises(ValueError, match="B == 1"):
        lact(
            *(torch.cat([t, t]) for t in (inp.q, inp.k, inp.v, inp.lr)),
            inp.w,
            chunk_size=4,
            cu_seqlens=[0, 8],
        )
    with pytest.raises(ValueError, match="pending tokens without momentum gates"):
        _call(state=s, beta=inp.beta)  # s holds 2 tokens gathered without beta
    assert isinstance(LaCTState.init(inp.w), LaCTState)


def test_auto_is_chunk_on_cpu() -> None:
    from batchcraft.ops.lact import chunk_lact

    assert resolve_impl("auto", torch.zeros(1)) is chunk_lact
