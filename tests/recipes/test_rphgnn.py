"""The RpHGNN recipe: the seed decides the run, and the CLI resumes by finished seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from batchcraft.cli.main import app
from batchcraft.recipes.rphgnn import PRESETS, fit_node_classifier

TIMES = ("precompute_s", "total_s", "train_time_s", "epoch_time_s", "time_to_best_s")


@pytest.fixture(scope="module")
def sbm():  # type: ignore[no-untyped-def]
    from batchcraft.data.hetero_sbm import hetero_sbm

    return hetero_sbm(num_papers=300, num_authors=150, generator=torch.Generator().manual_seed(0))


def _record(data, seed: int) -> dict:  # type: ignore[no-untyped-def, type-arg]
    cfg = dataclasses.replace(PRESETS["hetero-sbm"], num_iterations=2, epochs=4, patience=4)
    rec = fit_node_classifier(data, config=cfg, seed=seed)
    return {k: v for k, v in rec.items() if k not in TIMES}


def test_same_seed_same_record_other_seed_differs(sbm) -> None:  # type: ignore[no-untyped-def]
    state = torch.random.get_rng_state()
    a = _record(sbm, 0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    torch.manual_seed(99)  # the global RNG does not decide the run
    assert _record(sbm, 0) == a
    b = _record(sbm, 1)
    assert b["val_loss"] != a["val_loss"]


def test_cli_resumes_by_finished_seed(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["graph", "rphgnn", "--dataset", "sbm", "--epochs", "2", "-K", "1"]
    out = tmp_path / "r.json"
    res = runner.invoke(app, [*args, "--seeds", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    first = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in first] == [0]
    res = runner.invoke(app, [*args, "--seeds", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 seed(s) already done" in res.output and "seed 0:" not in res.output
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and runs[0] == first[0]
    fresh = tmp_path / "fresh.json"
    assert runner.invoke(app, [*args, "--seeds", "2", "--out", str(fresh)]).exit_code == 0
    ref = json.loads(fresh.read_text())["runs"]
    for got, want in zip(runs, ref, strict=True):  # resumed == uninterrupted, seed by seed
        assert {k: v for k, v in got.items() if k not in TIMES} == {
            k: v for k, v in want.items() if k not in TIMES
        }
    # another configuration is another run: its seeds are not taken from the file
    res = runner.invoke(app, ["graph", "rphgnn", "--dataset", "sbm", "--epochs", "2", "-K", "2",
                              "--seeds", "1", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0 and "0 seed(s) already done" in res.output
    assert len(json.loads(out.read_text())["runs"]) == 3
