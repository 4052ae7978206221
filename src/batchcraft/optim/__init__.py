"""batchcraft.optim."""

from batchcraft.optim._adan_functional import adan
from batchcraft.optim.adan import Adan
from batchcraft.optim.factory import (
    OptimInfo,
    create_optimizer,
    list_optimizers,
    param_groups,
    register_optimizer,
)

__all__ = [
    "Adan",
    "OptimInfo",
    "adan",
    "create_optimizer",
    "list_optimizers",
    "param_groups",
    "register_optimizer",
]
