"""The colm reproduction runs end to end at a toy size, on its typed settings."""

from __future__ import annotations

import dataclasses

import pytest

from batchcraft.experiments import colm
from batchcraft.experiments.base import ExperimentContext


def test_settings_are_typed_and_full_extends_quick():
    q, f = colm.ColmExperimentSettings.quick(), colm.ColmExperimentSettings.full()
    assert set(q.arms) < set(f.arms) and f.steps > q.steps and f.big == 2 * f.b
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.steps = 1  # type: ignore[misc]


def test_colm_experiment_toy(tmp_path, monkeypatch):
    toy = dataclasses.replace(colm.ColmExperimentSettings.quick(), steps=3, d_model=16, h=16,
                              eval_size=4)  # fmt: skip
    monkeypatch.setattr(colm.ColmExperimentSettings, "quick", classmethod(lambda cls: toy))
    res = colm.run(ExperimentContext(name="colm", quick=True, out_dir=tmp_path, seeds=[0]))
    assert res.verdict in ("reproduced", "partly", "not reproduced")
    assert res.data["settings"] == dataclasses.asdict(toy)
    assert set(res.data["mean_macro_loss"]) == set(toy.arms)
    assert "3 steps" in res.setting
