"""Learning-rate schedules as pure functions of the step, and the rule for extending a run.

``lr(step) = peak * factor(step)``, with ``factor`` from one of:

* ``cosine``: linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio`` at
  ``total`` steps (the paper recipes). Its shape depends on ``total``.
* ``wsd``: warm-up, a constant stable phase, then linear decay to ``min_lr_ratio`` over the last
  ``decay_fraction * total`` steps. Until the decay starts the lr does not depend on ``total``.
* ``constant``: warm-up, then constant.

**Extending a run.** Resuming at step ``s`` with a different ``total`` (``--steps``) continues
exactly as a fresh run of the new length would iff every lr the run has already used is the lr
the new schedule gives at that step: :func:`first_divergence` checks that step by step. It holds
for ``constant`` always, for ``wsd`` while neither decay has started, and for ``cosine`` only
during warm-up; otherwise the recipe refuses (or, with ``--allow-change``, says at which step
the two schedules part).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SCHEDULES", "LRSchedule", "first_divergence"]

SCHEDULES = ("cosine", "wsd", "constant")


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """``lr_at(step)`` for 0-based optimizer steps."""

    peak: float
    total: int
    warmup: int = 0
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # wsd only

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if not (math.isfinite(self.peak) and self.peak > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.peak}")
        if self.total < 1 or self.warmup < 0:
            raise ValueError(f"steps ({self.total}) must be >= 1 and warmup ({self.warmup}) >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must lie in (0, 1], got {self.decay_fraction}")

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        lo = self.min_lr_ratio
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            start = self.decay_start
            if step < start:
                return 1.0
            frac = (step - start + 1) / max(1, self.total - start)
            return 1.0 - (1.0 - lo) * min(1.0, frac)
        frac = (step - self.warmup) / max(1, self.total - self.warmup)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    @property
    def decay_start(self) -> int:
        """First step of the ``wsd`` decay phase."""
        return max(self.warmup, self.total - math.ceil(self.decay_fraction * self.total))

    def lr_at(self, step: int) -> float:
        return self.peak * self.factor(step)


def first_divergence(old: LRSchedule, new: LRSchedule, steps_done: int) -> int | None:
    """The first step ``< steps_done`` whose lr differs between ``old`` and ``new``, or ``None``
    when a run resumed at ``steps_done`` under ``new`` is exactly a fresh run under ``new``."""
    for s in range(steps_done):
        if old.lr_at(s) != new.lr_at(s):
            return s
    return None
