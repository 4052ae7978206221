"""``batchcraft graph train`` smoke test: exit code, history, checkpoint and resume."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from batchcraft.cli.graph_sage import register

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    sub = typer.Typer()
    register(sub)
    app.add_typer(sub, name="graph")
    return app


def test_train_resume_and_bad_options(tmp_path: Path) -> None:
    app = _app()
    args = ["graph", "train", "--dataset", "powerlaw", "--num-nodes", "600", "--num-features",
            "8", "--fanouts", "4,3", "--batch-size", "64", "--hidden", "16", "--max-batches", "2",
            "--out", str(tmp_path)]  # fmt: skip
    res = runner.invoke(app, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "checkpoint.pt").exists()
    res = runner.invoke(app, [*args, "--epochs", "2", "--resume", "--feature-backend", "staged"])
    assert res.exit_code == 0, res.output
    hist = json.loads((tmp_path / "history.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    # the final model's test accuracy is reported (the docs quote it), next to validation
    assert 0.0 <= hist[-1]["test_acc"] <= 1.0 and "test_acc" not in hist[0]
    assert f"test acc {hist[-1]['test_acc']:.4f}" in res.output
    assert set(hist[0]["stages"]) == {"sample", "gather", "transfer", "compute", "wait"}
    gcn_dir = tmp_path / "gcn"
    res = runner.invoke(app, [*args[:-1], str(gcn_dir), "--epochs", "1", "--model", "gcn"])
    assert res.exit_code == 0, res.output
    assert (gcn_dir / "history.json").exists()
    bad = runner.invoke(app, [*args, "--model", "gat"])
    assert bad.exit_code != 0 and "model must be one of" in bad.output
    bad = runner.invoke(app, [*args, "--fanouts", "4,x"])
    assert bad.exit_code != 0 and "fan-outs" in bad.output
    bad = runner.invoke(app, [*args, "--dataset", "reddit"])
    assert bad.exit_code != 0 and "dataset must be one of" in bad.output


def test_missing_planetoid_zip_names_the_path_tried(tmp_path: Path) -> None:
    res = runner.invoke(
        _app(), ["graph", "train", "--dataset", "cora", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "run")],
    )  # fmt: skip
    flat = "".join(c for c in res.output if c not in "│╭╮╰╯─" and not c.isspace())
    assert res.exit_code == 2 and str(tmp_path / "cora.zip") in flat
