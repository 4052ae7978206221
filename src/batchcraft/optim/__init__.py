"""batchcraft.optim."""

# The class first: importing the submodule ``batchcraft.optim.adan`` binds the package attribute
# ``adan`` to that module, and the functional ``adan`` imported next must win the name.
from batchcraft.optim.adan import Adan  # isort: skip
from batchcraft.optim._adan_functional import adan  # isort: skip
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
