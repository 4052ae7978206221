"""Which examples or batches to train on: hard batches (the schedule, sampler and baselines) and
CoLM coresets. The training loops that use them are recipes (:mod:`batchcraft.recipes.hard_batches`,
:mod:`batchcraft.recipes.colm`)."""

# CoLM coresets (issue 7): a sub-package, reached as batchcraft.selection.colm
from batchcraft.selection import colm
from batchcraft.selection.baselines import (
    OnlineBatchSelectionSampler,
    SelectiveBackprop,
    rank_based_probs,
    reducible_loss_select,
    topk_in_batch_loss,
)
from batchcraft.selection.hard import (
    FixedBatchSampler,
    HighLossSchedule,
    fixed_partition,
    num_training_steps,
    select_hard,
    select_random,
)

__all__ = [
    "FixedBatchSampler",
    "HighLossSchedule",
    "OnlineBatchSelectionSampler",
    "SelectiveBackprop",
    "colm",
    "fixed_partition",
    "num_training_steps",
    "rank_based_probs",
    "reducible_loss_select",
    "select_hard",
    "select_random",
    "topk_in_batch_loss",
]
