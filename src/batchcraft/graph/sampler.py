"""Uniform neighbour sampling over an in-neighbour CSR, vectorised in pure PyTorch.

For seeds ``[B0]`` and fan-outs ``[f_1, ..., f_L]``, hop l draws for every frontier node ``v``
``min(f_l, deg v)`` distinct in-neighbours uniformly (all of them when ``f_l = -1`` or
``deg v <= f_l``; ``f_l`` draws with replacement when ``replace=True``). Newly reached nodes are
appended to ``n_id`` in order of first appearance and form the next frontier. The result uses
local ids: seeds are rows ``0..B0-1`` (PyG's convention), and ``edge_index`` (row = source,
col = destination) indexes ``n_id``. There is no per-node Python loop: sampling without
replacement uses Floyd's algorithm vectorised over the frontier (a loop of ``f`` steps), so a hub
with a million in-neighbours costs as little as a leaf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from batchcraft.graph.csr import CSRGraph

__all__ = ["NeighborSampler", "SampledSubgraph"]


@dataclass
class SampledSubgraph:
    """A sampled computation graph around ``batch_size`` seeds.

    Attributes:
        n_id: ``[N_s]`` global ids of the sampled nodes; the first ``batch_size`` are the seeds.
        edge_index: ``[2, E_s]`` local edges (row = source, col = destination) into ``n_id``.
        batch_size: B0, number of seeds.
        num_sampled_nodes: ``[L + 1]`` nodes added per hop (hop 0 = seeds).
        num_sampled_edges: ``[L]`` edges added per hop.
    """

    n_id: Tensor
    edge_index: Tensor
    batch_size: int
    num_sampled_nodes: list[int]
    num_sampled_edges: list[int]


def _segment_arange(counts: Tensor) -> Tensor:
    """``cat([arange(c) for c in counts])`` without a loop."""
    total = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(total, device=counts.device) - torch.repeat_interleave(starts, counts)


class NeighborSampler:
    """Multi-hop uniform neighbour sampler.

    Args:
        graph: in-neighbour CSR.
        num_neighbors: fan-out per hop; ``-1`` takes every in-neighbour.
        replace: draw with replacement (exactly ``f`` draws per node with ``deg > 0``).
        generator: randomness (a private ``torch.Generator``; default seeded with 0).
    """

    def __init__(
        self,
        graph: CSRGraph,
        num_neighbors: list[int],
        *,
        replace: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(graph, CSRGraph):
            raise TypeError(f"graph must be a CSRGraph, got {type(graph).__name__}")
        if len(num_neighbors) == 0:
            raise ValueError("num_neighbors must list at least one hop, e.g. [25, 10]")
        for f in num_neighbors:
            if not isinstance(f, int) or (f < 1 and f != -1):
                raise ValueError(f"each fan-out must be a positive int or -1 (all), got {f!r}")
        self.graph = graph
        self.num_neighbors = list(num_neighbors)
        self.replace = replace
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._local = torch.full((graph.num_nodes,), -1, dtype=torch.long)

    def _sample_hop(self, frontier: Tensor, fanout: int) -> tuple[Tensor, Tensor]:
        """Sampled (source, destination) global ids for every node of ``frontier``."""
        indptr, indices = self.graph.indptr, self.graph.indices
        start = indptr[frontier]
        deg = indptr[frontier + 1] - start
        if self.replace and fanout != -1:
            has = deg > 0
            v, s, d = frontier[has], start[has], deg[has]
            r = torch.rand(v.numel(), fanout, generator=self.generator, dtype=torch.float64)
            pos = s.view(-1, 1) + (r * d.view(-1, 1)).long().clamp_max(d.view(-1, 1) - 1)
            return indices[pos.reshape(-1)], v.repeat_interleave(fanout)
        take_all = deg if fanout == -1 else torch.where(deg <= fanout, deg, torch.zeros_like(deg))
        # all neighbours of low-degree nodes
        pos_all = torch.repeat_interleave(start, take_all) + _segment_arange(take_all)
        dst_all = torch.repeat_interleave(frontier, take_all)
        if fanout == -1:
            return indices[pos_all], dst_all
        big = deg > fanout
        if not bool(big.any()):
            return indices[pos_all], dst_all
        vb, sb, db = frontier[big], start[big], deg[big]
        picks = self._floyd(db, fanout)  # [K, f] distinct offsets in [0, deg)
        pos_b = (sb.view(-1, 1) + picks).reshape(-1)
        dst_b = vb.repeat_interleave(fanout)
        return torch.cat([indices[pos_all], indices[pos_b]]), torch.cat([dst_all, dst_b])

    def _floyd(self, deg: Tensor, f: int) -> Tensor:
        """``f`` distinct uniform offsets in ``[0, deg_k)`` per row (Floyd's algorithm).

        Vectorised over rows; the Python loop runs ``f`` times (the fan-out), not per node. Step
        ``s`` draws ``t`` uniform in ``[0, j]`` with ``j = deg - f + s`` and keeps ``t`` unless it
        was already chosen, in which case it keeps ``j``: every f-subset is equally likely.
        Cost O(K f^2), independent of the degrees (hubs cost the same as leaves).
        """
        k = deg.numel()
        out = torch.empty(k, f, dtype=torch.long)
        for step in range(f):
            j = deg - f + step  # [K]
            r = torch.rand(k, generator=self.generator, dtype=torch.float64)
            t = (r * (j + 1).double()).long().clamp_max(j)
            taken = (out[:, :step] == t.view(-1, 1)).any(dim=1)
            out[:, step] = torch.where(taken, j, t)
        return out

    def sample(self, seeds: Tensor) -> SampledSubgraph:
        """Sample the L-hop computation graph of ``seeds: [B0]`` (distinct global ids)."""
        if not isinstance(seeds, Tensor) or seeds.dtype not in (torch.int32, torch.int64):
            raise TypeError("seeds must be an int32/int64 tensor of node ids")
        if seeds.dim() != 1:
            raise ValueError(f"seeds must be 1-D [B0], got shape {tuple(seeds.shape)}")
        seeds = seeds.long().cpu()
        n = self.graph.num_nodes
        if seeds.numel() and (int(seeds.min()) < 0 or int(seeds.max()) >= n):
            raise IndexError(f"seed ids must lie in [0, {n})")
        local = self._local
        local[seeds] = torch.arange(seeds.numel())
        if int((local[seeds] != torch.arange(seeds.numel())).sum()):
            local[seeds] = -1
            raise ValueError("seeds must be distinct node ids")
        n_ids = [seeds]
        num_nodes_hop = [seeds.numel()]
        rows: list[Tensor] = []
        cols: list[Tensor] = []
        num_edges_hop: list[int] = []
        count = seeds.numel()
        frontier = seeds
        try:
            for fanout in self.num_neighbors:
                src, dst = self._sample_hop(frontier, fanout)
                fresh = local[src] < 0
                cand = src[fresh]
                if cand.numel():
                    uniq, inv = torch.unique(cand, return_inverse=True)
                    first = torch.full((uniq.numel(),), cand.numel(), dtype=torch.long)
                    first.scatter_reduce_(0, inv, torch.arange(cand.numel()), reduce="amin")
                    new = uniq[torch.argsort(first)]  # order of first appearance
                else:
                    new = cand
                local[new] = torch.arange(count, count + new.numel())
                count += new.numel()
                rows.append(local[src])
                cols.append(local[dst])
                n_ids.append(new)
                num_nodes_hop.append(new.numel())
                num_edges_hop.append(src.numel())
                frontier = new
            n_id = torch.cat(n_ids)
        finally:
            local[torch.cat(n_ids)] = -1  # reset the shared map for the next call
        edge_index = torch.stack([torch.cat(rows), torch.cat(cols)])
        return SampledSubgraph(n_id, edge_index, seeds.numel(), num_nodes_hop, num_edges_hop)
