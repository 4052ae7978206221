"""batchcraft.data."""

# graph datasets (issue 8)
from batchcraft.data.graphs import GraphData, load_planetoid, powerlaw_graph  # noqa: E402

# HGB heterogeneous node classification + hetero SBM (issue 9)
from batchcraft.data.hetero_sbm import hetero_sbm  # noqa: E402
from batchcraft.data.hgb import HGBData, hgb_split, load_hgb  # noqa: E402

# CoLM synthetic instruction mixture (issue 7)
from batchcraft.data.mixture import Mixture, load_jsonl_mixture, make_mixture  # noqa: E402

# NVS toy scenes (issue 10)
from batchcraft.data.scenes import SceneViews, random_scene, render_dataset  # noqa: E402

# LaCT LM data (issue 3)
from batchcraft.data.synthetic import associative_recall, copy_task  # noqa: E402
from batchcraft.data.text import ByteBatches, ByteTokenizer, load_corpus  # noqa: E402
