"""Smoke test of ``batchcraft nvs train / eval / render`` (exit codes, checkpoint, table, PNG)."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from batchcraft.cli.nvs import register


def test_nvs_train_eval_render(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    run = CliRunner().invoke
    ck, png = tmp_path / "m.pt", tmp_path / "grid.png"
    r = run(app, ["train", "--steps", "2", "--scenes", "2", "--views", "3", "--inputs", "1",
                  "--targets", "1", "--size", "16", "--batch-size", "2", "--checkpoint", str(ck)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert ck.exists() and "done: 2 steps" in r.output
    r = run(
        app, ["eval", "--checkpoint", str(ck), "--scenes", "2", "--inputs", "1,2", "--targets", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "| 1 |" in r.output and "| 2 |" in r.output
    r = run(app, ["render", "--checkpoint", str(ck), "--out", str(png), "--scenes", "1",
                  "--inputs", "2", "--targets", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = run(app, ["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2
    r = run(app, ["train", "--preset", "huge", "--checkpoint", str(ck)])
    assert r.exit_code == 2 and "preset must be one of" in r.output
