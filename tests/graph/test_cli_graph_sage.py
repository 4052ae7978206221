"""``batchcraft graph train``: exit codes, history, checkpoint, guarded resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_one_line_error
from typer.testing import CliRunner

from batchcraft.cli.main import app

runner = CliRunner()

TINY = ["graph", "train", "--dataset", "powerlaw", "--num-nodes", "600", "--num-features", "8",
        "--fanouts", "4,3", "--batch-size", "64", "--hidden", "16", "--max-batches", "2"]  # fmt: skip


def test_train_resume_extend_and_gcn(tmp_path: Path) -> None:
    args = [*TINY, "--out", str(tmp_path)]
    res = runner.invoke(app, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "checkpoint" / "state.safetensors").exists()
    # more epochs and another feature path: resumed (the backend moves data, not maths)
    res = runner.invoke(app, [*args, "--epochs", "2", "--feature-backend", "staged"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output
    hist = json.loads((tmp_path / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    # the final model's test accuracy is reported (the docs quote it), next to validation
    assert 0.0 <= hist[-1]["test_acc"] <= 1.0 and "test_acc" not in hist[0]
    assert f"test acc {hist[-1]['test_acc']:.4f}" in res.output
    assert set(hist[0]["stages"]) == {"sample", "gather", "transfer", "compute", "wait"}
    gcn_dir = tmp_path / "gcn"
    res = runner.invoke(app, [*TINY, "--out", str(gcn_dir), "--epochs", "1", "--model", "gcn"])
    assert res.exit_code == 0, res.output
    assert (gcn_dir / "history.json").exists()


def test_changed_setting_is_refused_unless_allowed(tmp_path: Path) -> None:
    args = [*TINY, "--out", str(tmp_path), "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--lr", "0.01"])
    assert_one_line_error(res)
    assert "train.lr: 0.003 -> 0.01" in res.output and "--allow-change" in res.output
    res = runner.invoke(app, [*args, "--hidden", "8"])
    assert_one_line_error(res)
    assert "run.hidden: 16 -> 8" in res.output
    res = runner.invoke(app, [*args[:-1], "2", "--lr", "0.01", "--allow-change"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert manifest["step"] == 2 and manifest["changes"] == ["train.lr: 0.003 -> 0.01"]
    assert manifest["settings"]["train"]["lr"] == 0.01
    res = runner.invoke(app, [*args, "--hidden", "8", "--no-resume"])  # starts over
    assert res.exit_code == 0, res.output


BAD_GRAPH_TRAIN = [
    ["--model", "gat"],
    ["--fanouts", "4,x"],
    ["--fanouts", "4,0"],
    ["--dataset", "reddit"],
    ["--epochs", "0"],
    ["--batch-size", "0"],
    ["--hidden", "0"],
    ["--num-features", "0"],
    ["--num-nodes", "1"],
    ["--avg-degree", "nan"],
    ["--lr", "-1"],
    ["--lr", "inf"],
    ["--dropout", "1.0"],
    ["--dropout", "nan"],
    ["--prefetch", "-1"],
    ["--max-batches", "-1"],
    ["--seed", "-1"],
    ["--feature-backend", "gpu-magic"],
    ["--pin", "sometimes"],
    ["--out", "{tmp}/file.txt"],
    ["--dataset", "cora", "--data-dir", "{tmp}/missing"],
]


@pytest.mark.parametrize("args", BAD_GRAPH_TRAIN, ids=lambda a: " ".join(a))
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    res = runner.invoke(
        app, [*TINY, "--out", str(tmp_path / "run"), *(a.format(tmp=tmp_path) for a in args)]
    )
    assert_one_line_error(res)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_missing_planetoid_zip_names_the_path_tried(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["graph", "train", "--dataset", "cora", "--data-dir", str(tmp_path),
              "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert_one_line_error(res)
    flat = "".join(c for c in res.output if not c.isspace())
    assert str(tmp_path / "cora.zip") in flat
