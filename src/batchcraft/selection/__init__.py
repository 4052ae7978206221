"""batchcraft.selection."""

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
from batchcraft.selection.hard_loop import HighLossLog, supervised_loss, train_high_loss

__all__ = [
    "FixedBatchSampler",
    "HighLossLog",
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
    "supervised_loss",
    "topk_in_batch_loss",
    "train_high_loss",
]
