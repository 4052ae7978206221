"""`batchcraft selection hard-batches`: trains, checkpoints, resumes, fails clearly."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from batchcraft.cli.main import _attach_subcommands, app

runner = CliRunner()
_attach_subcommands()


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_trains_checkpoints_and_resumes(tmp_path):
    ckpt = tmp_path / "hb.pt"
    args = ["selection", "hard-batches", "--dataset", "mixture", "--delta", "0.5", "--epochs", "2",
            "--checkpoint", str(ckpt)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and "done: 124 steps" in res.output
    assert "124 steps in total" in res.output  # announced before training (num_training_steps)
    assert ckpt.exists()
    from batchcraft.utils.io import load_checkpoint

    state = load_checkpoint(ckpt)  # safetensors + JSON: no pickled objects
    assert state["schedule"]["steps_done"] == 124
    res2 = runner.invoke(app, args)  # finished run: resumes and has nothing left to do
    assert res2.exit_code == 0, res2.output
    assert "done: 124 steps" in res2.output


def test_bad_delta_exits_2():
    res = runner.invoke(
        app, ["selection", "hard-batches", "--dataset", "mixture", "--delta", "1.5"]
    )
    assert res.exit_code == 2
    assert "delta must be" in res.output


def test_unknown_dataset_exits_2():
    res = runner.invoke(app, ["selection", "hard-batches", "--dataset", "cifar"])
    assert res.exit_code == 2


def test_batch_larger_than_dataset_exits_2():
    res = runner.invoke(
        app, ["selection", "hard-batches", "--dataset", "mixture", "--batch-size", "100000"]
    )
    assert res.exit_code == 2
    assert "batch_size must be in" in res.output
