"""The hard-batches experiment: registered, its model and statistics helpers are right."""

from __future__ import annotations

import math

import pytest
import torch

from batchcraft.data.images import hard_mixture
from batchcraft.experiments.hard_batches import (
    ARMS,
    _ci,
    _steps_to,
    compare_arms,
    reshuffled_loop,
    train_arm,
)
from batchcraft.models.small import SmallResNet
from batchcraft.registry import experiments


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registered():
    spec = experiments()["hard-batches"]
    assert spec.order == 50 and spec.quick_minutes <= 3


def test_small_resnet_shapes():
    for hw in (8, 14, 28):
        assert SmallResNet(width=4)(torch.randn(3, 1, hw, hw)).shape == (3, 10)
    assert SmallResNet(features=7, classes=4)(torch.randn(2, 7)).shape == (2, 4)


def test_steps_to_and_ci():
    curve = [(10, 0.5), (20, 0.8), (30, 0.79)]
    assert _steps_to(curve, 0.8) == 20 and math.isnan(_steps_to(curve, 0.9))
    mean, half = _ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 * 1.0 / math.sqrt(3))


def test_arms_share_the_step_budget():
    split = hard_mixture(640, 200, seed=0)
    out = {arm: train_arm(arm, split, seed=0, batch_size=32, epochs=2, lr=0.05, eval_every=10)
           for arm in ("plain (δ=1)", "reshuffled loop", "hard δ=0.2", "Selective-Backprop")}  # fmt: skip
    assert {r["curve"][-1][0] for r in out.values()} == {40}
    assert out["hard δ=0.2"]["samples_loaded"] == out["plain (δ=1)"]["samples_loaded"] == 40 * 32
    assert out["reshuffled loop"]["samples_loaded"] == 40 * 32
    assert out["Selective-Backprop"]["samples_loaded"] > 40 * 32  # extra scoring forwards


class _Recorder(torch.nn.Module):
    """A linear classifier on ``x: [B, 1]`` holding sample ids; records each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 2)
        self.batches: list[list[int]] = []

    def forward(self, x):
        if self.training:
            self.batches.append(sorted(x[:, 0].long().tolist()))
        return self.lin(x)


def test_reshuffled_loop_draws_a_new_order_every_epoch():
    n, m = 40, 8  # b = 5 batches per epoch
    ds = torch.utils.data.TensorDataset(torch.arange(n).float()[:, None], torch.zeros(n).long())
    model = _Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    curve, costs = reshuffled_loop(model, opt, ds, batch_size=m, num_steps=12,
                                   generator=torch.Generator().manual_seed(0), scheduler=sched,
                                   eval_fn=lambda _: 0.5, eval_every=5)  # fmt: skip
    assert [s for s, _ in curve] == [5, 10, 12] and costs == {"samples_loaded": 96, "forwards": 12}
    assert sched.last_epoch == 12 and len(model.batches) == 12
    e1, e2, e3 = model.batches[:5], model.batches[5:10], model.batches[10:]
    for epoch in (e1, e2):  # each full epoch visits every sample once
        assert sorted(i for bt in epoch for i in bt) == list(range(n))
    assert {tuple(bt) for bt in e1} != {tuple(bt) for bt in e2}  # a new partition each epoch
    assert len(e3) == 2 and {tuple(bt) for bt in e3} - {tuple(bt) for bt in e2}


def _fake(final: float, early: float = 0.70) -> list[dict]:
    jitter = (0.0, 0.004, -0.003)  # shared by every arm of a seed: paired differences are exact
    return [{"final": final + j, "curve": [(10, early + j), (20, final + j)]} for j in jitter]


@pytest.mark.parametrize("reshuffled_wins", [True, False], ids=["reshuffled-best", "plain-best"])
def test_verdict_compares_with_the_strongest_standard_loop(reshuffled_wins):
    plain, shuffled = (0.80, 0.83) if reshuffled_wins else (0.80, 0.78)
    res = {a: _fake(plain) for a in ARMS}
    res["reshuffled loop"] = _fake(shuffled)
    for a in ("hard δ=0.8", "hard δ=0.5", "hard δ=0.2"):
        res[a] = _fake(0.815)  # +1.5 points over the fixed partition in every seed
    cmp = compare_arms(res)
    hard = ["hard δ=0.8", "hard δ=0.5", "hard δ=0.2"]
    assert cmp.vs_plain["hard δ=0.5"][0] == pytest.approx(1.5)
    assert cmp.speed["hard δ=0.5"] == pytest.approx(1.0)  # every arm reaches its target at step 20
    if reshuffled_wins:  # beating the fixed partition is not enough
        assert cmp.best == "reshuffled loop"
        assert cmp.gains["hard δ=0.5"][0] == pytest.approx(-1.5)
        assert cmp.acc_better == [] and cmp.acc_worse == hard
        assert cmp.verdict == "not reproduced"
        assert cmp.target == pytest.approx(0.81 + 0.001 / 3)
    else:
        assert cmp.best == "plain (δ=1)"
        assert cmp.acc_better == hard and cmp.verdict == "partly"


def test_experiment_runs_end_to_end_on_its_typed_settings(tmp_path, monkeypatch):
    import dataclasses

    from batchcraft.experiments import hard_batches as hb
    from batchcraft.experiments.base import ExperimentContext

    toy = dataclasses.replace(hb.HardBatchesExperimentSettings.quick(), steps=8, evals=2)
    monkeypatch.setattr(hb.HardBatchesExperimentSettings, "quick", classmethod(lambda cls: toy))
    res = hb.run(ExperimentContext(name="hard-batches", quick=True, out_dir=tmp_path, seeds=[0]))
    assert res.verdict in ("reproduced", "partly", "not reproduced")
    assert res.data["settings"] == dataclasses.asdict(toy)
    assert all((tmp_path / p).is_file() for p in res.plots)
