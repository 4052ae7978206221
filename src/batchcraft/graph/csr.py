"""Compressed in-neighbour adjacency (CSR by destination, i.e. CSC of the edge list).

``indices[indptr[v]:indptr[v + 1]]`` are the sources ``u`` of the edges ``u -> v``: exactly the
nodes whose messages ``v`` aggregates. Built once from an ``edge_index`` (or a PyG ``Data``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["CSRGraph", "csr_from_data", "csr_from_edge_index"]


class CSRGraph(NamedTuple):
    """In-neighbour CSR.

    Attributes:
        indptr: ``[N + 1]`` int64 offsets.
        indices: ``[E]`` int64 source ids, grouped by destination (stable within a group).
    """

    indptr: Tensor
    indices: Tensor

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_edges(self) -> int:
        return self.indices.numel()

    def degree(self) -> Tensor:
        """``[N]`` in-degrees."""
        return self.indptr[1:] - self.indptr[:-1]

    def neighbors(self, v: int) -> Tensor:
        """In-neighbours of node ``v`` (a view)."""
        return self.indices[self.indptr[v] : self.indptr[v + 1]]

    def to_edge_index(self) -> Tensor:
        """``[2, E]`` edge list (row = source, col = destination), grouped by destination."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), self.degree())
        return torch.stack([self.indices, dst])

    def to(self, device: torch.device | str) -> CSRGraph:
        return CSRGraph(self.indptr.to(device), self.indices.to(device))


def csr_from_edge_index(edge_index: Tensor, num_nodes: int) -> CSRGraph:
    """Build the in-neighbour CSR of ``edge_index: [2, E]`` (row = source, col = destination).

    Edges are grouped by destination with a stable sort, so each node's neighbours keep their
    input order. Duplicate edges are kept (they count twice, as in a multigraph).
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"edge_index must be int32 or int64, got {edge_index.dtype}")
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    ei = edge_index.long().cpu()
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
        raise ValueError(
            f"edge_index ids must lie in [0, num_nodes={num_nodes}), "
            f"got range [{int(ei.min())}, {int(ei.max())}]"
        )
    src, dst = ei[0], ei[1]
    order = torch.sort(dst, stable=True).indices
    counts = torch.bincount(dst, minlength=num_nodes)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    torch.cumsum(counts, 0, out=indptr[1:])
    return CSRGraph(indptr, src[order].contiguous())


def csr_from_data(data: Any) -> CSRGraph:
    """CSR of any object with ``edge_index`` and ``num_nodes`` (e.g. ``torch_geometric.data.Data``)."""
    if not hasattr(data, "edge_index"):
        raise TypeError(
            f"expected an object with .edge_index and .num_nodes, got {type(data).__name__}"
        )
    n = getattr(data, "num_nodes", None)
    if n is None:
        x = getattr(data, "x", None)
        if x is None:
            raise ValueError("data has no num_nodes and no x to infer it from")
        n = x.shape[0]
    return csr_from_edge_index(data.edge_index, int(n))
