"""The memory planner (``batchcraft lm plan``) against measured memory on CPU.

Tolerances: parameters, gradients and optimizer state agree with the bytes a real training step
holds on each of 2 gloo ranks (DDP and FSDP2) within 0.1 % (the planner leaves out the
optimizers' scalar ``step`` tensors); the traced activations equal the bytes autograd saves in a
real forward within 1 % (in practice exactly).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import assert_one_line_error, spawn_gloo
from recipes.plan_cases import CONTEXT, SETTINGS, measure_ranks
from typer.testing import CliRunner

from batchcraft.cli.main import app
from batchcraft.models.lact_config import get_preset
from batchcraft.ops.lact import LaCTOptions, lact
from batchcraft.recipes.lm import LMBatch, _loss, build_lm
from batchcraft.recipes.memory import (
    SavedBytes,
    _flash_attention,
    _recomputing_lact,
    trace_activations,
)
from batchcraft.recipes.plan import plan_memory

STATE_TOL = 1e-3
ACT_TOL = 1e-2


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    spawn_gloo(measure_ranks, 2, str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1)


@pytest.mark.parametrize("setting", SETTINGS, ids="/".join)
def test_plan_matches_a_real_step_on_two_ranks(measured, setting):
    preset, parallel, optimizer = setting
    rows = plan_memory(
        preset, context=CONTEXT, gpus=2, gpu_mem_gib=1, optimizer=optimizer, cp=[1],
        target="cpu",
    )  # fmt: skip
    (row,) = [r for r in rows if r.parallel == parallel and not r.checkpointing]
    assert row.seqs_per_rank == 1 and row.tokens_per_rank == CONTEXT
    for rank, res in enumerate(measured):
        got = res["/".join(setting)]
        for name, want in (("params", row.params), ("grads", row.grads),
                           ("optimizer", row.optimizer)):  # fmt: skip
            assert _rel(want, got[name]) <= STATE_TOL, (rank, name, want, got[name])
        assert _rel(row.activations, got["activations"]) <= ACT_TOL, (rank, row, got)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_fsdp_halves_parameters_and_optimizer_state(measured, preset):
    for res in measured:
        for opt in ("adamw", "adan"):
            ddp, fsdp = res.get(f"{preset}/ddp/{opt}"), res.get(f"{preset}/fsdp/{opt}")
            if ddp is None:
                continue
            for name in ("params", "grads", "optimizer"):
                assert fsdp[name] / ddp[name] == pytest.approx(0.5, rel=1e-3), (preset, name)


@pytest.mark.parametrize("preset,batch,context", [("tiny", 2, 48), ("small", 1, 128)])
def test_traced_activations_equal_a_real_forward(preset, batch, context):
    cfg = get_preset(preset)
    prof = trace_activations(cfg, batch=batch, context=context, target="cpu")
    model = build_lm(cfg, 0)
    ids = torch.randint(0, cfg.vocab_size, (batch, context + 1))
    real = SavedBytes(exclude=model.parameters())
    with real.saved_by_autograd():
        _loss(model, LMBatch(ids[:, :-1], ids[:, 1:]))
    assert _rel(prof.total, real.total) <= ACT_TOL, (prof, real.total)
    assert prof.block_input == batch * context * cfg.hidden_size * 4
    assert prof.checkpointed < prof.total


def test_two_traced_blocks_extrapolate_to_all_layers():
    cfg = get_preset("small")  # 4 layers
    two = trace_activations(cfg, batch=1, context=128, target="cpu", traced_layers=2)
    four = trace_activations(cfg, batch=1, context=128, target="cpu", traced_layers=4)
    assert two.total == four.total and two.block == four.block


@pytest.mark.parametrize("norm,momentum", [("post", True), ("pre", True), (None, False)])
def test_lact_standin_saves_what_the_triton_kernel_saves(norm, momentum):
    from ops.lact.lact_cases import make_inputs

    import batchcraft.ops.lact.triton as tri

    os.environ.setdefault("TRITON_INTERPRET", "1")
    inp = make_inputs(2, 32, 2, 8, 16, dtype=torch.float32, requires_grad=True, seed=8)
    q, k, v = (t.to(torch.bfloat16) for t in (inp.q, inp.k, inp.v))
    opts = LaCTOptions(chunk_size=8, use_momentum=momentum, weight_norm=norm)
    beta = inp.beta if momentum else None
    saved = {}
    for name, fn in (("triton", tri.triton_lact), ("standin", _recomputing_lact(lact, False))):
        c = SavedBytes(exclude=list(inp.w))
        with c.saved_by_autograd():
            fn(q, k, v, inp.lr, inp.w, opts, beta=beta)
        saved[name] = c.total
    assert saved["triton"] == saved["standin"] > 0, saved


def test_attention_standin_saves_q_k_v_out_and_lse():
    from batchcraft.nn.attention import window_attention

    q, k, v = (torch.randn(2, 40, 4, 8, requires_grad=True) for _ in range(3))
    c = SavedBytes(exclude=[q, k, v])
    with c.saved_by_autograd():
        o = _flash_attention(window_attention)(q, k, v, window=16)
    assert torch.allclose(o, window_attention(q, k, v, window=16))
    assert c.total == o.numel() * 4 + 2 * 4 * 40 * 4  # out + fp32 lse [B, H, T]


def test_plan_rows_and_fits():
    rows = plan_memory("tiny", context=64, gpus=4, gpu_mem_gib=0.012, cp=[1, 2], target="cpu")
    assert {(r.parallel, r.checkpointing, r.cp) for r in rows} == {
        (p, a, c) for p in ("ddp", "fsdp") for a in (False, True) for c in (1, 2)
    }
    for r in rows:
        assert r.fits == (r.total <= 0.9 * 0.012 * 2**30)
        assert r.tokens_per_rank == 64 // r.cp
    by = {(r.parallel, r.checkpointing, r.cp): r for r in rows}
    # a quarter each, plus the padding of dim-0 shards (e.g. qk_scale [2, d]: one row per rank)
    quarter = by["ddp", False, 1].params / 4
    assert quarter <= by["fsdp", False, 1].params <= 1.1 * quarter
    assert by["ddp", True, 1].activations < by["ddp", False, 1].activations
    assert by["ddp", False, 2].activations < by["ddp", False, 1].activations
    assert any(r.fits for r in rows) and not all(r.fits for r in rows)


runner = CliRunner()


def test_cli_plan_prints_the_table():
    r = runner.invoke(app, ["lm", "plan", "--preset", "tiny", "--context", "64", "--gpus", "2",
                            "--gpu-mem", "1", "--cp", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| fsdp | yes | 1 |" in r.output and "fits: 4 of 4 settings" in r.output


BAD_PLAN = [
    ["--preset", "huge"],
    ["--gpus", "0"],
    ["--gpu-mem", "0"],
    ["--gpu-mem", "nan"],
    ["--context", "1"],
    ["--optimizer", "sgd"],
    ["--cp", "a,b"],
    ["--cp", "3"],
    ["--batch", "3", "--cp", "1"],
    ["--batch", "0"],
]


@pytest.mark.parametrize("args", BAD_PLAN, ids=lambda a: " ".join(a))
def test_cli_plan_bad_input_is_one_line_exit_2(args):
    base = {"--preset": "tiny", "--context": "64", "--gpus": "2", "--gpu-mem": "1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    r = runner.invoke(app, ["lm", "plan", *[x for kv in base.items() for x in kv]])
    assert_one_line_error(r)
