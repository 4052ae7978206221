"""GraphSAGE (mean aggregator) over sampled subgraphs or whole graphs.

``SAGEConv``: ``h'_v = W_l mean_{u -> v} h_u + b_l + W_r h_v`` (mean over in-edges; 0 without
in-edges). ``GraphSAGE`` stacks L of them with ReLU + dropout in between. On a sampled subgraph
whose nodes are ordered by hop (seeds first), ``forward(..., num_sampled_nodes=...,
num_sampled_edges=...)`` trims each layer to the nodes and edges that still influence the seeds,
which changes no seed output (tested) but saves work.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GraphSAGE", "SAGEConv", "mean_aggregate"]


def mean_aggregate(x: Tensor, edge_index: Tensor, num_dst: int) -> Tensor:
    """Mean of source features over each destination's in-edges.

    Args:
        x: ``[N, F]`` source features.
        edge_index: ``[2, E]`` (row = source, col = destination < num_dst).
        num_dst: number of destination rows.

    Returns:
        ``[num_dst, F]`` means (zeros where a node has no in-edge).
    """
    src, dst = edge_index[0], edge_index[1]
    out = x.new_zeros(num_dst, x.shape[1]).index_add_(0, dst, x.index_select(0, src))
    deg = torch.bincount(dst, minlength=num_dst).clamp_min(1).to(x.dtype)
    return out / deg.unsqueeze(1)


class SAGEConv(nn.Module):
    """GraphSAGE convolution with mean aggregation (parameters laid out like PyG's ``SAGEConv``).

    Args:
        in_channels: F_in.
        out_channels: F_out.
        bias: add ``b_l`` to the aggregated term.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin_l = nn.Linear(in_channels, out_channels, bias=bias)  # neighbours
        self.lin_r = nn.Linear(in_channels, out_channels, bias=False)  # root

    def forward(self, x: Tensor, edge_index: Tensor, num_dst: int | None = None) -> Tensor:
        """``x: [N, F_in]``, ``edge_index: [2, E]`` -> ``[num_dst or N, F_out]``."""
        n = x.shape[0] if num_dst is None else num_dst
        return self.lin_l(mean_aggregate(x, edge_index, n)) + self.lin_r(x[:n])


class GraphSAGE(nn.Module):
    """L-layer GraphSAGE producing class logits.

    Args:
        in_channels: F.
        hidden_channels: width of the hidden layers.
        out_channels: number of classes.
        num_layers: L (>= 1).
        dropout: dropout probability between layers.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(self.make_conv(a, b) for a, b in itertools.pairwise(dims))
        self.dropout = dropout

    def make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
        """One layer of the stack (subclasses such as :class:`GCN` return their own conv)."""
        return SAGEConv(in_channels, out_channels)

    def conv_extras(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, ...]:
        """Extra arguments every layer receives, computed once per forward on the untrimmed graph."""
        return ()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        *,
        num_sampled_nodes: list[int] | None = None,
        num_sampled_edges: list[int] | None = None,
    ) -> Tensor:
        """Logits ``[N, C]`` for every node of ``x: [N, F]`` (or, when trimming, for the first
        ``num_sampled_nodes[0]`` rows = the seeds).

        Args:
            x: ``[N, F]`` node features.
            edge_index: ``[2, E]`` local edges.
            num_sampled_nodes: per-hop node counts of a sampled subgraph (enables trimming;
                needs as many hops as layers).
            num_sampled_edges: per-hop edge counts (with ``num_sampled_nodes``).
        """
        trim = num_sampled_nodes is not None and num_sampled_edges is not None
        num_layers = len(self.convs)
        if trim:
            assert num_sampled_nodes is not None and num_sampled_edges is not None
            if len(num_sampled_edges) != num_layers or len(num_sampled_nodes) != num_layers + 1:
                raise ValueError(
                    f"trimming needs {num_layers} hops of sampling for {num_layers} layers, got "
                    f"{len(num_sampled_edges)}"
                )
        extras = self.conv_extras(x, edge_index)
        for i, conv in enumerate(self.convs):
            num_dst = None
            ei = edge_index
            if trim:
                assert num_sampled_nodes is not None and num_sampled_edges is not None
                keep_hops = num_layers - i  # outputs needed for hops 0 .. keep_hops-1
                num_dst = sum(num_sampled_nodes[:keep_hops])
                x = x[: sum(num_sampled_nodes[: keep_hops + 1])]
                ei = edge_index[:, : sum(num_sampled_edges[:keep_hops])]
            x = conv(x, ei, num_dst, *extras)
            if i < num_layers - 1:
                x = F.dropout(F.relu(x), p=self.dropout, training=self.training)
        return x
