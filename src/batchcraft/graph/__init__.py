"""Graph learning: where features live, how neighbours are sampled, how batches are delivered.

* Zero-copy feature gathering and neighbour-sampled GNN training (PyTorch-Direct, arXiv 2103.03330):
  :class:`PinnedFeatureStore`, :class:`CSRGraph`, :class:`NeighborSampler`, :class:`NeighborLoader`,
  :class:`GraphSAGE`.
* Heterogeneous graphs and RpHGNN (arXiv 2310.14481): :class:`HeteroGraph`,
  :func:`rphgnn_precompute`, :class:`RpHGNN`.

Training loops live in the recipes: :mod:`batchcraft.recipes.sage` and
:mod:`batchcraft.recipes.rphgnn`.
"""

from batchcraft.graph.csr import CSRGraph, csr_from_data, csr_from_edge_index
from batchcraft.graph.feature_store import PinnedFeatureStore, is_uva_available
from batchcraft.graph.hetero import HeteroGraph, canonicalize_relations, mean_propagate
from batchcraft.graph.loader import MiniBatch, NeighborLoader
from batchcraft.graph.rphgnn import random_projection, rphgnn_precompute
from batchcraft.graph.rphgnn_model import RpHGNN, f1_scores
from batchcraft.graph.sage import GraphSAGE, SAGEConv
from batchcraft.graph.sampler import NeighborSampler, SampledSubgraph

__all__ = [
    "CSRGraph",
    "GraphSAGE",
    "HeteroGraph",
    "MiniBatch",
    "NeighborLoader",
    "NeighborSampler",
    "PinnedFeatureStore",
    "RpHGNN",
    "SAGEConv",
    "SampledSubgraph",
    "canonicalize_relations",
    "csr_from_data",
    "csr_from_edge_index",
    "f1_scores",
    "is_uva_available",
    "mean_propagate",
    "random_projection",
    "rphgnn_precompute",
]
