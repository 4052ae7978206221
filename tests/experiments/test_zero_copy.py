"""The zero-copy reproduction runs end to end and decides its verdict from its measurements."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchcraft.experiments.base import ExperimentContext
from batchcraft.registry import experiments


def test_registered() -> None:
    spec = experiments()["zero-copy"]
    assert spec.order == 70 and spec.quick_minutes <= 2 and "2103.03330" in spec.paper


@pytest.mark.slow
def test_quick_run(tmp_path: Path) -> None:
    spec = experiments()["zero-copy"]
    res = spec.fn(ExperimentContext(name="zero-copy", quick=True, out_dir=tmp_path, seeds=[0]))
    assert res.verdict in ("partly", "not reproduced")  # CPU-only: never "reproduced"
    assert "NOT tested" in res.summary
    names = {m.name for m in res.metrics}
    assert "max |loss difference| across feature paths" in names
    loss_metric = next(m for m in res.metrics if m.name.startswith("max |loss"))
    assert loss_metric.values == [0.0]  # every feature path gives identical losses
    assert res.data["settings"]["nodes"] == 150_000
    for p in res.plots:
        assert (tmp_path / p).stat().st_size > 1000
