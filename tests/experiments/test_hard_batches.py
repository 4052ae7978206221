"""The hard-batches experiment: registered, its model and statistics helpers are right."""

from __future__ import annotations

import math

import pytest
import torch

from batchcraft.data.images import hard_mixture
from batchcraft.experiments.hard_batches import SmallResNet, _ci, _steps_to, train_arm
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
           for arm in ("plain (δ=1)", "hard δ=0.2", "Selective-Backprop")}  # fmt: skip
    assert {r["curve"][-1][0] for r in out.values()} == {40}
    assert out["hard δ=0.2"]["samples_loaded"] == out["plain (δ=1)"]["samples_loaded"] == 40 * 32
    assert out["Selective-Backprop"]["samples_loaded"] > 40 * 32  # extra scoring forwards
