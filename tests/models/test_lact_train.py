"""LM training loop: exact resume from checkpoints, evaluation, CLI smoke tests."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from batchcraft.data.text import ByteBatches, ByteCorpus
from batchcraft.models.lact_config import lact_tiny
from batchcraft.models.lact_lm import LaCTForCausalLM
from batchcraft.models.lact_train import (
    TrainSettings,
    evaluate,
    load_lm_checkpoint,
    lr_at,
    train_lm,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _corpus(n=4000, seed=0) -> ByteCorpus:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(97, 123, (n,), generator=g, dtype=torch.uint8)
    return ByteCorpus(data=data, doc_starts=torch.tensor([0]), files=[])


def _cfg():
    return lact_tiny(hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8,
                     low_rank=4, mlp_hidden=96, use_muon=True)  # fmt: skip


def test_resume_is_bit_identical(tmp_path):
    s = TrainSettings(steps=4, batch_size=2, context=24, warmup=1, ckpt_every=0)
    batches = ByteBatches(_corpus(), batch_size=2, context=24, seed=3)
    torch.manual_seed(0)
    a = LaCTForCausalLM(_cfg())
    ra = train_lm(a, batches, s, out_dir=tmp_path / "a")
    torch.manual_seed(0)
    b = LaCTForCausalLM(_cfg())
    train_lm(b, batches, s, out_dir=tmp_path / "b", stop_after=2)  # "interrupted"
    torch.manual_seed(123)
    b2 = LaCTForCausalLM(_cfg())  # fresh process: different init, replaced by the checkpoint
    rb = train_lm(b2, batches, s, out_dir=tmp_path / "b", resume=True)
    assert rb["step"] == 4 and [h["loss"] for h in rb["history"]] == [
        h["loss"] for h in ra["history"]
    ]
    for (n1, p1), (_, p2) in zip(a.state_dict().items(), b2.state_dict().items(), strict=True):
        assert torch.equal(p1, p2), n1
    loaded, state = load_lm_checkpoint(tmp_path / "b" / "checkpoint")
    assert state["step"] == 4 and state["optimizer"] is not None
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, b2.state_dict()[k])


def test_evaluate_reports_bits_per_byte_and_positions():
    model = LaCTForCausalLM(_cfg())
    val = ByteBatches(_corpus(seed=1), batch_size=3, context=16)
    res = evaluate(model, val.sequential(2))
    assert res["tokens"] == 2 * 3 * 16 and len(res["per_position"]) == 16
    assert math.isclose(res["bpb"], res["loss"] / math.log(2))
    assert abs(sum(res["per_position"]) / 16 - res["loss"]) < 1e-5
    assert abs(res["loss"] - math.log(256)) < 0.5  # untrained: near uniform


def test_lr_schedule_warmup_and_floor():
    s = TrainSettings(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(99, s) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(i, s) >= lr_at(i + 1, s) for i in range(10, 99))


def test_cli_train_eval_generate(tmp_path):
    from batchcraft.cli.main import _attach_subcommands, app

    _attach_subcommands()
    text = tmp_path / "corpus"
    text.mkdir()
    for i in range(100):  # ~5% of files go to validation by hash
        (text / f"f{i}.py").write_text("def f(x):\n    return x + 1\n" * 20)
    run = CliRunner()
    out = tmp_path / "run"
    args = ["lm", "train", "--text", str(text), "--steps", "3", "--batch", "2", "--context",
            "32", "--out", str(out), "--warmup", "1"]  # fmt: skip
    res = run.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "checkpoint" / "model.safetensors").is_file()
    res = run.invoke(app, ["lm", "eval", "--checkpoint", str(out / "checkpoint"), "--text",
                           str(text), "--context", "32", "--batches", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output and (out / "per_position.csv").is_file()
    assert (out / "per_position.png").is_file()
    res = run.invoke(app, ["lm", "generate", "--checkpoint", str(out / "checkpoint"),
                           "--prompt", "def", "--max-new-tokens", "5"])  # fmt: skip
    assert res.exit_code == 0 and res.output.startswith("def")
    res = run.invoke(app, ["lm", "train", "--model", "mamba", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    res = run.invoke(app, ["lm", "eval", "--checkpoint", str(tmp_path)])
    assert res.exit_code == 2
