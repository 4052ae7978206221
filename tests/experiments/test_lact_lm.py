"""The lact-lm reproduction at a micro setting: report structure, and a verdict computed from
the figures it reports."""

from __future__ import annotations

import dataclasses

import pytest

from batchcraft.experiments import lact_lm
from batchcraft.experiments.base import ExperimentContext

MICRO = lact_lm.LaCTLMSettings(
    recall=lact_lm.RecallPart(hidden_size=32, num_heads=1, num_attn_heads=2, mlp_hidden=32,
                              window=4, pairs=2, steps=3, batch=4, warmup=1, eval_rows=8),
    text=lact_lm.TextPart(window=16, context=32, batch=2, steps=2, warmup=1, eval_batches=1,
                          max_bytes=200_000),
)  # fmt: skip


def test_lact_lm_micro_report(tmp_path, monkeypatch):
    monkeypatch.setattr(lact_lm, "_settings", lambda quick: MICRO)
    ctx = ExperimentContext(name="lact-lm", quick=True, out_dir=tmp_path, seeds=[0])
    res = lact_lm.run(ctx)
    assert set(res.plots) == {"recall_accuracy.png", "recall_train_loss.png",
                              "per_position_loss.png"}  # fmt: skip
    assert all((tmp_path / p).is_file() for p in res.plots)
    d = res.data
    assert d["recall"]["arms"] == list(MICRO.recall.arms)
    assert d["text"]["arms"] == list(MICRO.text.arms)
    for part in ("recall", "text"):
        params = d[part]["params"]
        assert max(params.values()) / min(params.values()) < 1.01  # parameter-matched
        for m in lact_lm.LACT:  # the diagnostics ran on every LaCT arm, on every layer
            if m in d[part]["arms"]:
                layers = d[part]["diag"][m][0]
                assert [x["layer"] for x in layers] == [0.0, 1.0]
                assert all(x["drift"] > 0 and x["update_norm"] > 0 for x in layers), layers
    assert d["recall"]["params"]["lact_off"] == d["recall"]["params"]["lact_muon"]
    assert len(d["text"]["curves"]["swa"][0]) == 32
    assert len(d["recall"]["per_query"]["lact"][0]) == 2
    assert d["chance"] == pytest.approx(1 / 64)

    # the verdict follows from the reported figures by the stated rule
    acc = {m: v[0] for m, v in d["recall"]["acc"].items()}
    assert lact_lm.recall_verdict(acc, d["chance"]) == d["recall_ok"]
    w, t = MICRO.text.window, MICRO.text.context
    assert d["text"]["seeds"] == [0, 1]  # the text part averages at least two seeds

    def mean(runs):
        return [sum(x) / len(x) for x in zip(*runs, strict=True)]

    curves = {m: mean(c) for m, c in d["text"]["curves"].items()}
    inside = {m: sum(c[:w]) / w for m, c in curves.items()}
    beyond = {m: sum(c[w:]) / (t - w) for m, c in curves.items()}
    off = {m: sum(mean(c)[w:]) / (t - w) for m, c in d["text"]["curves_eval_off"].items()}
    early = {m: sum(c[w : 2 * w]) / w for m, c in curves.items()}
    late = {m: sum(c[t - t // 4 :]) / (t // 4) for m, c in curves.items()}
    ok, gains = lact_lm.text_verdict(inside, beyond, off, early, late)
    assert ok == d["text_ok"] and gains.keys() == d["text_gains"].keys()
    assert all(gains[m] == pytest.approx(d["text_gains"][m]) for m in gains)
    r, x = any(d["recall_ok"].values()), any(d["text_ok"].values())
    assert res.verdict == ("reproduced" if r and x else "partly" if r or x else "not reproduced")
    assert "Rule:" in res.summary and str(d["recall_ok"]) in res.summary
    names = {m.name for m in res.metrics}
    assert "recall accuracy lact, updates off at eval" in names
    assert "text long-range gain of lact over updates off [nats/byte]" in names


def test_verdict_rules_on_hand_made_figures():
    chance = 1 / 64
    good = {"lact": 0.5, "lact_muon": 0.1, "lact_off": 0.02, "swa": 0.015}
    assert lact_lm.recall_verdict(good, chance) == {"lact": True, "lact_muon": False}
    near_off = {**good, "lact_off": 0.45}  # updates off does as well: no memory shown
    assert lact_lm.recall_verdict(near_off, chance)["lact"] is False
    inside = {"lact": 2.0, "lact_off": 2.0, "swa": 2.1}
    beyond = {"lact": 1.8, "lact_off": 1.9, "swa": 2.05}
    eval_off = {"lact": 1.9}
    early = {"lact": 1.9, "lact_off": 1.9, "swa": 2.0}  # the gap to SWA: 0.1 past the window ...
    late = {"lact": 1.7, "lact_off": 1.9, "swa": 2.0}  # ... 0.3 in the last quarter
    ok, gains = lact_lm.text_verdict(inside, beyond, eval_off, early, late)
    assert ok == {"lact": True} and gains["lact"]["lact_off"] == pytest.approx(0.1)
    assert gains["lact"]["eval_off"] == pytest.approx(0.1)
    assert gains["lact"]["swa_growth"] == pytest.approx(0.2)
    # a gap that is as large inside the window (a training difference, not memory) fails
    ok, _ = lact_lm.text_verdict({**inside, "lact_off": 2.1}, beyond, eval_off, early, late)
    assert ok == {"lact": False}
    # a model whose loss does not move when its updates are switched off uses no memory
    ok, _ = lact_lm.text_verdict(inside, beyond, {"lact": 1.802}, early, late)
    assert ok == {"lact": False}
    # a gap to SWA that does not open with position is not the paper's effect
    ok, _ = lact_lm.text_verdict(inside, beyond, eval_off, early, {**late, "lact": 1.9})
    assert ok == {"lact": False}


def test_settings_are_validated_and_the_quick_run_has_every_recall_arm():
    assert lact_lm.QUICK.recall.arms == lact_lm.ARMS
    assert set(lact_lm.FULL.text.arms) == set(lact_lm.ARMS)
    with pytest.raises(ValueError, match="arms"):
        lact_lm.TextPart(arms=("lact", "swa"))  # no updates-off arm to compare against
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(lact_lm.QUICK.recall, steps=0)
    with pytest.raises(ValueError, match="context"):
        lact_lm.TextPart(window=64, context=64)
    with pytest.raises(ValueError, match="inner_lr"):
        lact_lm.TextPart(inner_lr=float("nan"))
    with pytest.raises(ValueError, match="min_seeds"):
        lact_lm.TextPart(min_seeds=0)


def test_text_part_extends_the_seeds_to_its_minimum():
    part = lact_lm.TextPart(min_seeds=2)
    assert part.seeds([0]) == [0, 1]
    assert part.seeds([5]) == [5, 6]
    assert part.seeds([0, 1, 2]) == [0, 1, 2]  # more than the minimum: as asked
    assert lact_lm.TextPart(min_seeds=1).seeds([3]) == [3]


def test_arms_give_the_same_figures_in_worker_processes_as_in_process(tmp_path, monkeypatch):
    import batchcraft.utils.parallel as parallel

    monkeypatch.setattr(lact_lm, "_settings", lambda quick: MICRO)
    runs = []
    for workers in (2, 1):
        monkeypatch.setattr(parallel, "default_workers", lambda jobs, w=workers: min(w, jobs))
        ctx = ExperimentContext(name="lact-lm", quick=True, out_dir=tmp_path / str(workers),
                                seeds=[0])  # fmt: skip
        runs.append(lact_lm.run(ctx).data)
    two, one = runs
    assert two["recall"]["acc"] == one["recall"]["acc"]
    assert two["recall"]["curve"] == one["recall"]["curve"]
    assert two["text"]["curves"] == one["text"]["curves"]
    assert two["text"]["curves_eval_off"] == one["text"]["curves_eval_off"]
