"""Smoke test of ``batchcraft nvs train / eval / render`` (exit codes, checkpoint, table, PNG)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_one_line_error
from typer.testing import CliRunner

from batchcraft.cli.main import app

runner = CliRunner()


def _run(*args: object):
    return runner.invoke(app, ["nvs", *(str(a) for a in args)])


def test_nvs_train_eval_render(tmp_path: Path) -> None:
    out, png = tmp_path / "run", tmp_path / "grid.png"
    r = _run("train", "--steps", 2, "--scenes", 2, "--views", 3, "--inputs", 1, "--targets", 1,
             "--size", 16, "--batch-size", 2, "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    ck = out / "checkpoint"
    assert (ck / "model.safetensors").exists() and "done: 2 steps" in r.output
    r = _run("eval", "--checkpoint", ck, "--scenes", 2, "--inputs", "1,2", "--targets", 1)
    assert r.exit_code == 0, r.output
    assert "| 1 |" in r.stdout and "| 2 |" in r.stdout and "updates-off" in r.stdout
    r = _run("render", "--checkpoint", ck, "--out", png, "--scenes", 1, "--inputs", 2,
             "--targets", 1)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"


BAD_NVS = [
    ["train", "--inputs=-1"],
    ["train", "--inputs", "a,b"],
    ["train", "--inputs", "4", "--views", "4"],
    ["train", "--lr", "nan"],
    ["train", "--steps", "0"],
    ["train", "--preset", "huge"],
    ["train", "--mixer", "mamba"],
    ["train", "--style", "photoreal"],
    ["train", "--size", "4"],
    ["train", "--out", "{tmp}/file.txt"],
    ["eval", "--checkpoint", "{tmp}/missing"],
    ["eval", "--checkpoint", "{tmp}", "--inputs", "0"],
    ["render", "--checkpoint", "{tmp}/missing"],
    ["render", "--checkpoint", "{tmp}", "--out", "{tmp}"],
]


@pytest.mark.parametrize("args", BAD_NVS, ids=lambda a: " ".join(a))
def test_nvs_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "file.txt").write_text("x")
    r = runner.invoke(app, ["nvs", *(a.format(tmp=tmp_path) for a in args)])
    assert_one_line_error(r)
