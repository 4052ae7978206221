"""LaCTOptions: validated once, shared by every implementation, keyword form == options form."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from ops.lact.lact_cases import assert_states_close, make_inputs

from batchcraft.ops.lact import LaCTOptions, chunk_lact, lact, naive_lact
from batchcraft.ops.lact.options import resolve_options

BAD = [
    ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
    ({"chunk_size": True}, ValueError, "chunk_size must be a positive int"),
    ({"muon": "adam"}, ValueError, "muon must be one of"),
    ({"muon_steps": -1}, ValueError, "muon_steps must be an int >= 0"),
    ({"muon_steps": 6}, ValueError, "muon_steps must be <= 5"),
    ({"weight_norm": "mid"}, ValueError, "weight_norm must be one of"),
    ({"fast_weight": "mlp"}, ValueError, "fast_weight must be one of"),
    ({"inner_loss": "l1"}, ValueError, "inner_loss must be one of"),
    ({"inner_steps": 0}, ValueError, "inner_steps must be an int >= 1"),
    ({"lact_impl": "cuda"}, ValueError, "lact_impl must be one of"),
    ({"use_muon": 1}, TypeError, "use_muon must be a bool"),
]


@pytest.mark.parametrize(("kw", "exc", "match"), BAD, ids=[b[2][:28] for b in BAD])
def test_options_validate_in_post_init(
    kw: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        LaCTOptions(**kw)


def test_options_are_frozen_and_hashable() -> None:
    opts = LaCTOptions(chunk_size=8, use_muon=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.chunk_size = 4  # type: ignore[misc]
    assert hash(opts) == hash(LaCTOptions(chunk_size=8, use_muon=True))
    assert opts.muon_schedule == "tuned" and LaCTOptions().muon_schedule is None
    assert LaCTOptions(muon_steps=9, muon="classic").muon_steps == 9  # classic: any count


def test_keyword_form_translates_the_historical_names() -> None:
    o = resolve_options(None, {"chunk_size": 4, "muon": "classic", "impl": "naive", "loss": "mse"},
                        beta_given=True)  # fmt: skip
    assert o == LaCTOptions(
        chunk_size=4, use_muon=True, muon="classic", lact_impl="naive", inner_loss="mse",
        use_momentum=True,
    )  # fmt: skip
    assert not resolve_options(None, {"chunk_size": 4, "muon": None}, beta_given=False).use_muon
    base = LaCTOptions(chunk_size=4)
    assert resolve_options(base, {}, beta_given=False) is base  # nothing to apply: same object
    assert resolve_options(base, {"muon_steps": 3}, beta_given=False).muon_steps == 3
    with pytest.raises(TypeError, match="not both"):
        resolve_options(None, {"impl": "chunk", "lact_impl": "naive"}, beta_given=False)
    with pytest.raises(TypeError, match=r"unknown LaCTOptions option\(s\) \['chunk'\]"):
        resolve_options(None, {"chunk": 4}, beta_given=False)
    with pytest.raises(TypeError, match="options must be a LaCTOptions"):
        resolve_options({"chunk_size": 4}, {}, beta_given=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [naive_lact, chunk_lact, lact], ids=["naive", "chunk", "lact"])
def test_options_object_equals_keyword_form(fn: Any) -> None:
    inp = make_inputs(2, 19, 2, 4, 8)
    opts = LaCTOptions(chunk_size=5, use_momentum=True, use_muon=True, weight_norm="pre")
    o1, s1 = fn(inp.q, inp.k, inp.v, inp.lr, inp.w, opts, beta=inp.beta)
    o2, s2 = fn(inp.q, inp.k, inp.v, inp.lr, inp.w, chunk_size=5, beta=inp.beta, muon="tuned",
                weight_norm="pre")  # fmt: skip
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)
    assert_states_close(s1, s2, rtol=0, atol=0)
    # keywords override the object
    o3, _ = fn(inp.q, inp.k, inp.v, inp.lr, inp.w, opts, beta=inp.beta, use_muon=False)
    o4, _ = fn(inp.q, inp.k, inp.v, inp.lr, inp.w, dataclasses.replace(opts, use_muon=False),
               beta=inp.beta)  # fmt: skip
    torch.testing.assert_close(o3, o4, rtol=0, atol=0)
    assert (o3 - o1).abs().max() > 1e-6


def test_momentum_flag_and_beta_must_agree() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    with pytest.raises(ValueError, match="use_momentum=True needs beta"):
        lact(inp.q, inp.k, inp.v, inp.lr, inp.w, LaCTOptions(chunk_size=4, use_momentum=True))
    with pytest.raises(ValueError, match="beta was given but use_momentum=False"):
        lact(inp.q, inp.k, inp.v, inp.lr, inp.w, LaCTOptions(chunk_size=4), beta=inp.beta)


def test_causal_schedule_needs_chunk_size_but_others_do_not() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    with pytest.raises(ValueError, match="needs chunk_size"):
        lact(inp.q, inp.k, inp.v, inp.lr, inp.w, LaCTOptions())
    o, _ = lact(inp.q, inp.k, inp.v, inp.lr, inp.w, LaCTOptions(), schedule="bidirectional")
    assert o.shape == inp.q.shape


def test_check_rejects_negative_lr() -> None:
    inp = make_inputs(1, 8, 2, 4, 8)
    lr = inp.lr.clone()
    lr[0, 2, 1, 0] = -0.1
    lact(inp.q, inp.k, inp.v, lr, inp.w, chunk_size=4)  # unchecked: runs (gradient ascent)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        lact(inp.q, inp.k, inp.v, lr, inp.w, chunk_size=4, check=True)
