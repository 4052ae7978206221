"""Helpers of the Adan reproduction (experiments/adan.py): small, fast, deterministic."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from batchcraft.experiments.adan import (
    TaskSetting,
    _lr_factor,
    _seeded,
    steps_to_target,
    train_curve,
)
from batchcraft.models.small import ByteTransformerLM, SmallCNN


def test_steps_to_target() -> None:
    curve = [(0, 2.0), (10, 1.5), (20, 1.0), (30, 1.1)]
    assert steps_to_target(curve, 1.2) == 20.0
    assert steps_to_target(curve, 2.0) == 0.0
    assert math.isnan(steps_to_target(curve, 0.5))


def test_schedule_warms_up_then_decays_to_zero() -> None:
    s = TaskSetting(steps=100, eval_every=10, batch=4, adamw={}, adan={}, warmup_frac=0.1)
    f = [_lr_factor(i, s) for i in range(100)]
    assert f[0] == 0.1 and f[9] == 1.0 and f[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(f[10:])) and f[-1] < 1e-2


def test_seeded_init_is_deterministic_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b = _seeded(ByteTransformerLM(16, 1, 2, 8), 3), _seeded(ByteTransformerLM(16, 1, 2, 8), 3)
    torch.random.set_rng_state(state)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    ids = torch.randint(0, 256, (2, 8))
    assert a(ids).shape == (2, 8, 256)


def test_train_curve_decreases_with_both_optimizers() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 8, 8, generator=gen)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    s = TaskSetting(steps=40, eval_every=20, batch=32,
                    adamw=dict(lr=5e-3, weight_decay=0.05), adan=dict(lr=2e-2, max_grad_norm=1.0))  # fmt: skip

    def batch(step: int):
        i = (step * 32) % 128
        return x[i : i + 32], y[i : i + 32]

    for name in ("adamw", "adan"):
        model = _seeded(SmallCNN(2, 4), 0)
        curve = train_curve(
            model,
            name,
            s,
            batch,
            lambda m: float(F.cross_entropy(m(x), y).detach()),
            F.cross_entropy,
        )
        assert [st for st, _ in curve] == [0, 20, 40]
        assert curve[-1][1] < curve[0][1]


def test_step_ratio_is_finite_when_adan_never_reaches_target() -> None:
    from batchcraft.experiments.adan import step_ratio
    from batchcraft.experiments.base import Metric

    s = TaskSetting(steps=100, eval_every=25, batch=4, adamw={}, adan={})
    adamw = [(0, 3.0), (25, 2.0), (50, 1.5), (75, 1.2), (100, 1.2)]
    faster = [(0, 3.0), (25, 1.1), (50, 1.0), (75, 0.9), (100, 0.9)]
    never = [(0, 3.0), (25, 2.5), (50, 2.0), (75, 1.5), (100, 1.3)]
    assert step_ratio(faster, adamw, s) == 25 / 75
    assert step_ratio(never, adamw, s) == 125 / 75  # censored one evaluation past the budget
    m = Metric("ratio", [step_ratio(faster, adamw, s), step_ratio(never, adamw, s)])
    assert math.isfinite(m.std) and m.format()
