"""Reproductions of each paper's headline claim, one module per claim, registered by name.

Run them with ``batchcraft reproduce [NAMES] [--quick|--full]``; see :mod:`batchcraft.registry`.
"""

from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric

__all__ = ["ExperimentContext", "ExperimentResult", "Metric"]
