"""A small heterogeneous graph container in PyG's vocabulary (the data layer; no operators).

Vocabulary (as in PyTorch Geometric, without depending on it):

* ``x_dict``: ``{node_type: Tensor[N_t, F_t] | None}`` (``None`` = featureless type);
* ``edge_index_dict``: ``{(src, rel, dst): Tensor[2, E]}`` with row 0 the source and row 1 the
  destination, both local ids of their type;
* ``num_nodes_dict``: ``{node_type: N_t}``; ``metadata() = (node_types, edge_types)``.

The operators on it (relation canonicalisation, mean propagation) live in
:mod:`batchcraft.graph.hetero`, which re-exports :class:`HeteroGraph` and :data:`EdgeType`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

EdgeType = tuple[str, str, str]

__all__ = ["EdgeType", "HeteroGraph", "check_edge_index"]


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int, what: str = "") -> None:
    """Raise a clear error unless ``edge_index`` is an int ``[2, E]`` of ids ``< num_src / num_dst``.

    Args:
        edge_index: ``[2, E]`` (source, destination) local ids.
        num_src, num_dst: node counts of the source and destination types.
        what: a label appended to ``edge_index`` in the messages (e.g. the edge type).
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index{what} must be a Tensor[2, E], got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index{what} must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"edge_index{what} must be int64 or int32, got {edge_index.dtype}")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError(f"edge_index{what} has negative ids; ids must be local and >= 0")
    if int(edge_index[0].max()) >= num_src or int(edge_index[1].max()) >= num_dst:
        raise ValueError(
            f"edge_index{what} ids out of range: sources must be < {num_src} and "
            f"destinations < {num_dst}, got max {int(edge_index[0].max())} / {int(edge_index[1].max())}"
        )


@dataclass
class HeteroGraph:
    """A heterogeneous graph: features per node type and edges per ``(src, rel, dst)`` type.

    Attributes:
        x_dict: ``{type: x [N_t, F_t] or None}``; types missing here are featureless.
        edge_index_dict: ``{(src, rel, dst): edge_index [2, E]}`` of local ids.
        num_nodes_dict: ``{type: N_t}``; inferred from features / edges when omitted.
    """

    x_dict: dict[str, Tensor | None] = field(default_factory=dict)
    edge_index_dict: dict[EdgeType, Tensor] = field(default_factory=dict)
    num_nodes_dict: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nn = dict(self.num_nodes_dict)
        for t, x in self.x_dict.items():
            if x is not None:
                if x.dim() != 2:
                    raise ValueError(f"x_dict[{t!r}] must be [N, F], got shape {list(x.shape)}")
                if t in nn and nn[t] != x.shape[0]:
                    raise ValueError(
                        f"num_nodes_dict[{t!r}] = {nn[t]} but x_dict[{t!r}] has {x.shape[0]} rows"
                    )
                nn.setdefault(t, int(x.shape[0]))
        for et, ei in self.edge_index_dict.items():
            if not (isinstance(et, tuple) and len(et) == 3 and all(isinstance(p, str) for p in et)):
                raise TypeError(f"edge types must be (src, rel, dst) string triples, got {et!r}")
            s, _, d = et
            if ei.numel():
                nn.setdefault(s, int(ei[0].max()) + 1)
                nn.setdefault(d, int(ei[1].max()) + 1)
            else:
                nn.setdefault(s, 0)
                nn.setdefault(d, 0)
            check_edge_index(ei, nn[s], nn[d], f"[{et!r}]")
        self.num_nodes_dict = nn

    @property
    def node_types(self) -> list[str]:
        """Node types, sorted by name."""
        return sorted(self.num_nodes_dict)

    @property
    def edge_types(self) -> list[EdgeType]:
        """Edge types, sorted."""
        return sorted(self.edge_index_dict)

    def metadata(self) -> tuple[list[str], list[EdgeType]]:
        """``(node_types, edge_types)`` as in PyG."""
        return self.node_types, self.edge_types

    def num_edges(self) -> int:
        """Total number of stored edges over all types."""
        return sum(int(e.shape[1]) for e in self.edge_index_dict.values())

    def to_pyg(self) -> Any:
        """Convert to ``torch_geometric.data.HeteroData`` (needs the ``pyg`` extra)."""
        from batchcraft._capabilities import require

        require("torch_geometric", "HeteroGraph.to_pyg")
        from torch_geometric.data import HeteroData

        data = HeteroData()
        for t in self.node_types:
            x = self.x_dict.get(t)
            if x is not None:
                data[t].x = x
            data[t].num_nodes = self.num_nodes_dict[t]
        for et, ei in self.edge_index_dict.items():
            data[et].edge_index = ei
        return data

    @classmethod
    def from_pyg(cls, data: Any) -> HeteroGraph:
        """Build from a ``torch_geometric.data.HeteroData`` (``x`` and ``edge_index`` are read)."""
        node_types, edge_types = data.metadata()
        x_dict: dict[str, Tensor | None] = {}
        num_nodes: dict[str, int] = {}
        for t in node_types:
            store = data[t]
            x_dict[t] = store.x if "x" in store else None
            num_nodes[t] = int(store.num_nodes)
        edges = {tuple(et): data[et].edge_index for et in edge_types}
        return cls(x_dict, edges, num_nodes)  # type: ignore[arg-type]
