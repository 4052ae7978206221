"""`batchcraft selection hard-batches`: trains, checkpoints, resumes, fails clearly."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error
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
    out = tmp_path / "run"
    args = ["selection", "hard-batches", "--dataset", "mixture", "--delta", "0.5", "--epochs", "2",
            "--out", str(out)]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and "done: 124 steps" in res.output
    assert "124 steps in total" in res.output  # announced before training (num_training_steps)
    from batchcraft.utils.io import load_checkpoint

    state = load_checkpoint(out / "checkpoint" / "state.safetensors")  # no pickled objects
    assert state["schedule"]["steps_done"] == 124
    res2 = runner.invoke(app, args)  # finished run: resumes and has nothing left to do
    assert res2.exit_code == 0, res2.output
    assert "done: 124 steps" in res2.output
    res3 = runner.invoke(app, [*args[:-2], "--delta", "0.8", "--out", str(out)])
    assert res3.exit_code == 2 and "delta: 0.5 -> 0.8" in res3.output, res3.output


def test_bad_delta_exits_2():
    res = runner.invoke(
        app, ["selection", "hard-batches", "--dataset", "mixture", "--delta", "1.5"]
    )
    assert res.exit_code == 2
    assert "--delta" in res.output and len(res.output.strip().splitlines()) == 1


def test_unknown_dataset_exits_2():
    res = runner.invoke(app, ["selection", "hard-batches", "--dataset", "cifar"])
    assert res.exit_code == 2


def test_batch_larger_than_dataset_exits_2():
    res = runner.invoke(
        app, ["selection", "hard-batches", "--dataset", "mixture", "--batch-size", "100000"]
    )
    assert res.exit_code == 2
    assert "batch_size must be in" in res.output


BAD = [["--delta", "0"], ["--delta", "nan"], ["--epochs", "-1"], ["--lr", "inf"],
       ["--refresh-every", "0"], ["--selector", "best"], ["--out", "{tmp}/f.txt"]]  # fmt: skip


@pytest.mark.parametrize("extra", BAD, ids=lambda a: " ".join(a))
def test_bad_input_is_one_line_exit_2(tmp_path, extra):
    (tmp_path / "f.txt").write_text("x")
    args = [
        "selection",
        "hard-batches",
        "--dataset",
        "mixture",
        *(a.format(tmp=tmp_path) for a in extra),
    ]
    res = runner.invoke(app, args)
    assert_one_line_error(res)
