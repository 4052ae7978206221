"""batchcraft.data."""

# graph datasets (issue 8)
from batchcraft.data.graphs import GraphData, load_planetoid, powerlaw_graph  # noqa: E402
