"""The nvs reproduction runs end to end at a toy size and reports every arm (marker slow)."""

from __future__ import annotations

import pytest

from batchcraft.experiments import nvs
from batchcraft.experiments.base import ExperimentContext


@pytest.mark.slow
def test_nvs_experiment_toy(tmp_path, monkeypatch):
    toy = nvs.NVSExperimentSettings(train_scenes=6, test_scenes=3, steps=2, batch=2, lr=1e-3,
                                    timing_views=(1, 2), timing_size=16)  # fmt: skip
    monkeypatch.setattr(nvs.NVSExperimentSettings, "quick", classmethod(lambda cls: toy))
    res = nvs.run(ExperimentContext(name="nvs", quick=True, out_dir=tmp_path, seeds=[0]))
    assert res.verdict in ("reproduced", "partly", "not reproduced")
    assert set(res.plots) == {"psnr_vs_views.png", "time_vs_views.png", "train_loss.png",
                              "image_grid.png"}  # fmt: skip
    assert all((tmp_path / p).is_file() for p in res.plots)
    psnr = res.data["psnr"]
    assert set(psnr) == {"lact", "off", "attention", "mean"}
    assert all(len(v) == len(nvs.VIEWS_EVAL) for v in psnr.values())
    # targets are fixed and updates off ignores the inputs: one value for every view count
    assert max(psnr["off"]) - min(psnr["off"]) < 1e-6
    assert len(set(psnr["lact"])) > 1  # with updates, the inputs change the rendering
    drift = res.data["drift"]  # {views: [layer][gate, up, down]}
    assert set(drift) == {str(v) for v in nvs.VIEWS_EVAL}
    assert all(len(d) == 2 and min(map(min, d)) > 0 for d in drift.values())
    assert max(res.data["params"].values()) / min(res.data["params"].values()) < 1.005
    assert res.data["settings"]["steps"] == 2
    assert "updates-off" in res.summary and len(res.tables) == 3
