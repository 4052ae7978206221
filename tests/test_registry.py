"""Registry, runner (resume) and report generation, with a fake experiment."""

from __future__ import annotations

import json

import pytest

from batchcraft import registry
from batchcraft.experiments.base import ExperimentResult, Metric
from batchcraft.experiments.runner import run_experiments


@pytest.fixture
def fake_registry(monkeypatch):
    registry.experiments()  # import the real modules first, so they register in the real dict
    monkeypatch.setattr(registry, "_EXPERIMENTS", dict(registry._EXPERIMENTS))
    calls: list[str] = []

    @registry.register_experiment(
        "fake-ok", paper="Fake (arXiv 0000.00000)", claim="x beats y", order=0
    )
    def fake_ok(ctx):
        calls.append(ctx.name)
        plt = pytest.importorskip("matplotlib.pyplot")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [ctx.seeds[0], 1])
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        plot = ctx.save_figure(fig, "curve.png")
        return ExperimentResult(
            metrics=[Metric("gain", [1.5, 2.5], paper="+2", unit="%")],
            verdict="reproduced",
            summary="x beat y by 2 points.",
            plots=[plot],
        )

    @registry.register_experiment("fake-fail", paper="Fake", claim="fails", order=1)
    def fake_fail(ctx):
        calls.append(ctx.name)
        raise RuntimeError("boom")

    return calls


def test_run_writes_results_and_resumes(tmp_path, fake_registry):
    calls = fake_registry
    recs = run_experiments(["fake-ok", "fake-fail"], quick=True, out=tmp_path, seeds=2)
    assert recs["fake-ok"]["status"] == "ok" and recs["fake-fail"]["status"] == "failed"
    assert "boom" in recs["fake-fail"]["error"]
    saved = json.loads((tmp_path / "fake-ok" / "result.json").read_text())
    assert saved["result"]["metrics"][0]["mean"] == pytest.approx(2.0)
    assert calls == ["fake-ok", "fake-fail"]
    # Resume: the finished experiment is skipped, the failed one runs again.
    run_experiments(["fake-ok", "fake-fail"], quick=True, out=tmp_path, seeds=2)
    assert calls == ["fake-ok", "fake-fail", "fake-fail"]
    # A different setting (full instead of quick) is not "finished".
    run_experiments(["fake-ok"], quick=False, out=tmp_path, seeds=2)
    assert calls[-1] == "fake-ok"


def test_report_comes_from_json_and_is_self_contained(tmp_path, fake_registry):
    run_experiments(["fake-ok"], quick=True, out=tmp_path, seeds=2)
    md = (tmp_path / "summary.md").read_text()
    assert "2 ± 0.7071 %" in md and "reproduced" in md and "x beats y" in md
    page = (tmp_path / "index.html").read_text()
    assert "data:image/png;base64," in page
    for ref in ("http://", "https://", "src='fake-ok/", 'src="fake-ok/', "<link", "<script"):
        assert ref not in page


def test_unknown_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiments(["no-such-experiment"], quick=True, out=tmp_path)


def test_duplicate_registration_rejected(monkeypatch):
    registry.experiments()
    monkeypatch.setattr(registry, "_EXPERIMENTS", {})
    registry.register_experiment("dup", paper="p", claim="c")(lambda ctx: None)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_experiment("dup", paper="p", claim="c")(lambda ctx: None)


def test_metric_formatting():
    assert Metric("m", [1.0]).format() == "1"
    assert Metric("m", [1.0, 3.0], unit="s").format() == "2 ± 1.414 s"
    assert Metric("m", []).format() == "n/a"


def test_registry_covers_every_component():
    """Each paper has its reproduction and each component its benchmark, registered by name."""
    names = set(registry.experiments())
    expected = {"lact-utilization", "lact-lm", "nvs", "adan", "layernorm", "hard-batches", "colm"}
    expected |= {"zero-copy", "rphgnn"}
    assert expected <= names, f"missing experiments: {expected - names}"
    for spec in registry.experiments().values():
        assert spec.paper and spec.claim and spec.quick_minutes > 0
    benches = set(registry.benchmarks())
    wanted = {"lact-op", "lact-decode", "lact-train", "lact-million", "adan", "norm", "lnlstm"}
    wanted |= {"hard-batches", "colm", "gather", "rphgnn-scaling"}
    assert wanted <= benches, f"missing benchmarks: {wanted - benches}"


def test_quick_budget_fits_thirty_minutes():
    """The declared --quick durations add up to the report's 30-minute target on 2 cores."""
    total = sum(spec.quick_minutes for spec in registry.experiments().values())
    assert total <= 30, f"--quick experiments declare {total} minutes in total"
