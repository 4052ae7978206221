"""The layernorm reproduction runs end to end at a toy size, on its typed settings."""

from __future__ import annotations

import dataclasses

from batchcraft.experiments import layernorm
from batchcraft.experiments.base import ExperimentContext


def test_layernorm_experiment_toy(tmp_path, monkeypatch):
    toy = layernorm.LayerNormExperimentSettings(
        steps=4, lr=3e-3, image_train=256, image_test=64, image_hidden=8, lm_bytes=20_000,
        lm_seq=16, lm_hidden=8, mlp_epochs=1,
    )  # fmt: skip
    monkeypatch.setattr(
        layernorm.LayerNormExperimentSettings, "quick", classmethod(lambda cls: toy)
    )
    res = layernorm.run(
        ExperimentContext(name="layernorm", quick=True, out_dir=tmp_path, seeds=[0])
    )
    assert res.verdict in ("reproduced", "partly", "not reproduced")
    assert res.data["settings"] == dataclasses.asdict(toy)
    assert "4 Adam steps" in res.setting
    assert all((tmp_path / p).is_file() for p in res.plots)
