"""kill -9 at a random moment, then resume: the run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import run_killed_then_resumed
from safetensors.torch import load_file


def _step(manifest) -> int:
    return int(json.loads(manifest.read_text())["step"])


def _run(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    cmd = [sys.executable, "-m", "batchcraft.cli.main", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_lm_kill9_resume_is_bit_identical(tmp_path, seed):
    text = tmp_path / "t.txt"
    text.write_text("def f(x):\n    return x * 2 + 1\n" * 200)

    def args(out):
        return ["lm", "train", "--text", str(text), "--steps", "14", "--batch", "2",
                "--context", "32", "--warmup", "2", "--ckpt-every", "1", "--out", str(out),
                "--chunk", "8", "--window", "8"]  # fmt: skip

    _run(args(tmp_path / "ref"))
    run_killed_then_resumed(
        args(tmp_path / "k"), tmp_path / "k" / "checkpoint" / "manifest.json",
        reached=lambda m: _step(m) >= 3 + 4 * seed, seed=seed,
    )  # fmt: skip
    from batchcraft.recipes.lm import load_lm

    a = load_lm(tmp_path / "ref" / "checkpoint").state_dict()
    b = load_lm(tmp_path / "k" / "checkpoint").state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())["history"]
    hb = json.loads((tmp_path / "k" / "history.json").read_text())["history"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_nvs_kill9_resume_is_bit_identical(tmp_path):
    def args(out):
        return ["nvs", "train", "--steps", "12", "--scenes", "3", "--views", "3", "--inputs", "1,2",
                "--targets", "1", "--size", "16", "--batch-size", "2", "--ckpt-every", "1",
                "--out", str(out)]  # fmt: skip

    _run(args(tmp_path / "ref"))
    run_killed_then_resumed(
        args(tmp_path / "k"), tmp_path / "k" / "checkpoint" / "manifest.json",
        reached=lambda m: _step(m) >= 4, seed=3,
    )  # fmt: skip
    a = load_file(tmp_path / "ref" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "k" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_hard_batches_kill9_resume_is_bit_identical(tmp_path):
    from batchcraft.utils.io import load_checkpoint

    def args(out):
        return ["selection", "hard-batches", "--dataset", "mixture", "--delta", "0.5",
                "--epochs", "3", "--out", str(out)]  # fmt: skip

    _run(args(tmp_path / "ref"))
    run_killed_then_resumed(
        args(tmp_path / "k"), tmp_path / "k" / "checkpoint" / "manifest.json",
        reached=lambda m: _step(m) >= 62, seed=5,
    )  # fmt: skip
    a = load_checkpoint(tmp_path / "ref" / "checkpoint" / "state.safetensors")
    b = load_checkpoint(tmp_path / "k" / "checkpoint" / "state.safetensors")
    assert a["log"]["batch_ids"] == b["log"]["batch_ids"]
    assert all(bool((a["model"][k] == b["model"][k]).all()) for k in a["model"])


def test_graph_train_kill9_resume_is_bit_identical(tmp_path):
    from batchcraft.utils.io import load_checkpoint

    def args(out):
        return ["graph", "train", "--dataset", "powerlaw", "--num-nodes", "600", "--num-features",
                "8", "--fanouts", "4,3", "--batch-size", "64", "--hidden", "16", "--epochs", "12",
                "--out", str(out)]  # fmt: skip

    _run(args(tmp_path / "ref"))
    run_killed_then_resumed(
        args(tmp_path / "k"), tmp_path / "k" / "checkpoint" / "manifest.json",
        reached=lambda m: _step(m) >= 3, seed=7,
    )  # fmt: skip
    a = load_checkpoint(tmp_path / "ref" / "checkpoint" / "state.safetensors")
    b = load_checkpoint(tmp_path / "k" / "checkpoint" / "state.safetensors")
    assert a["epoch"] == b["epoch"] == 12
    assert all(bool((a["model"][k] == b["model"][k]).all()) for k in a["model"])
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())["history"]
    hb = json.loads((tmp_path / "k" / "history.json").read_text())["history"]
    for key in ("loss", "train_acc", "val_acc", "test_acc"):
        assert [h.get(key) for h in ha] == [h.get(key) for h in hb], key
