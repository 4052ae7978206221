"""Training recipes, one module per paper, on one shared core.

The core (``dist``, ``seeding``, ``schedule``, ``session``) owns what every training run needs:
the ``torchrun`` process group and device, seeding of everything including the initial weights,
lr schedules as pure functions of the step, the run folder, atomic safetensors/JSON checkpoints
and the guarded resume. Each recipe module (``lm``, ``nvs``, ``sage``, ``rphgnn``,
``hard_batches``, ``colm``) is a thin, readable training loop over library components
(``batchcraft.models``, ``optim``, ``data``, ...); the CLI and the experiments call recipes,
and library packages never import from here.
"""

from batchcraft.recipes.dist import DistInfo, destroy_distributed, dist_info, init_distributed
from batchcraft.recipes.schedule import LRSchedule, first_divergence
from batchcraft.recipes.seeding import derive_seed, generator, isolated_rng, seeded, step_seed
from batchcraft.recipes.session import ResumeError, TrainSession, settings_diff

__all__ = [
    "DistInfo",
    "LRSchedule",
    "ResumeError",
    "TrainSession",
    "derive_seed",
    "destroy_distributed",
    "dist_info",
    "first_divergence",
    "generator",
    "init_distributed",
    "isolated_rng",
    "seeded",
    "settings_diff",
    "step_seed",
]
