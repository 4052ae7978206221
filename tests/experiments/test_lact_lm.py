"""The lact-lm reproduction runs end to end at a toy size and decides its verdict (marker slow)."""

from __future__ import annotations

import pytest

from batchcraft.experiments import lact_lm
from batchcraft.experiments.base import ExperimentContext


@pytest.mark.slow
def test_lact_lm_experiment_toy(tmp_path, monkeypatch):
    toy = dict(preset="tiny", window=16, context=32, batch=2, steps=3, lr=1e-3, warmup=1,
               eval_batches=1, max_bytes=200_000)  # fmt: skip
    monkeypatch.setattr(lact_lm, "_settings", lambda quick: toy)
    ctx = ExperimentContext(name="lact-lm", quick=True, out_dir=tmp_path, seeds=[0])
    res = lact_lm.run(ctx)
    assert res.verdict in ("reproduced", "partly", "not reproduced")
    assert {p for p in res.plots} == {"per_position_loss.png", "train_loss.png"}
    assert all((tmp_path / p).is_file() for p in res.plots)
    params = res.data["params"]
    assert max(params.values()) / min(params.values()) < 1.005  # parameter-matched
    assert len(res.data["per_position"]["swa"][0]) == 32
