"""batchcraft.graph."""

# zero-copy feature gathering + neighbour-sampled GraphSAGE (issue 8)
from batchcraft.graph.csr import CSRGraph, csr_from_data, csr_from_edge_index  # noqa: E402
from batchcraft.graph.feature_store import PinnedFeatureStore, is_uva_available  # noqa: E402
from batchcraft.graph.loader import MiniBatch, NeighborLoader  # noqa: E402
from batchcraft.graph.sage import GraphSAGE, SAGEConv  # noqa: E402
from batchcraft.graph.sampler import NeighborSampler, SampledSubgraph  # noqa: E402

# heterogeneous graphs + RpHGNN (issue 9)
from batchcraft.graph.hetero import HeteroGraph, canonicalize_relations, mean_propagate  # noqa: E402
from batchcraft.graph.rphgnn import random_projection, rphgnn_precompute  # noqa: E402
from batchcraft.graph.rphgnn_model import RpHGNN, f1_scores  # noqa: E402
