"""GCN (Kipf & Welling) over sampled subgraphs or whole graphs.

``GCNConv``: ``H' = D^-1/2 (A + I) D^-1/2 H W + b`` with ``D`` the in-degree of ``A + I``
(self-loops added, the normalisation PyG's ``GCNConv`` uses by default; inputs carry no
self-loops). On a sampled subgraph the degrees are those of the sampled edges, as with PyG's
``NeighborLoader``, counted once before trimming so trimmed and untrimmed seed outputs agree. ``GCN`` stacks L layers
with ReLU + dropout and supports the same hop-wise trimming as :class:`GraphSAGE`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from batchcraft.graph.sage import GraphSAGE

__all__ = ["GCN", "GCNConv", "gcn_norm_aggregate"]


def gcn_norm_aggregate(
    x: Tensor, edge_index: Tensor, num_dst: int, deg: Tensor | None = None
) -> Tensor:
    """``(D^-1/2 (A + I) D^-1/2 x)`` for the first ``num_dst`` rows.

    Args:
        x: ``[N, F]`` features (already multiplied by W).
        edge_index: ``[2, E]`` (row = source, col = destination < num_dst); no self-loops (one
            is added per node).
        num_dst: rows to produce (destinations come first in a sampled subgraph).
        deg: ``[>= N]`` in-degrees including the self-loop; default: counted from ``edge_index``.
            :class:`GCN` counts them once on the whole sampled subgraph so that trimming later
            layers does not change the normalisation.

    Returns:
        ``[num_dst, F]``.
    """
    n = x.shape[0]
    loops = torch.arange(num_dst, device=x.device)
    src = torch.cat([edge_index[0], loops])
    dst = torch.cat([edge_index[1], loops])
    if deg is None:
        deg = torch.bincount(edge_index[1], minlength=n) + 1
    d = deg[:n].to(x.dtype)
    inv_sqrt = d.pow(-0.5).masked_fill(d == 0, 0.0)
    w = inv_sqrt[src] * inv_sqrt[dst]
    return x.new_zeros(num_dst, x.shape[1]).index_add_(0, dst, x[src] * w.unsqueeze(1))


class GCNConv(nn.Module):
    """Graph convolution with symmetric normalisation and self-loops.

    Args:
        in_channels: F_in.
        out_channels: F_out.
        bias: add a bias after aggregation.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        num_dst: int | None = None,
        deg: Tensor | None = None,
    ) -> Tensor:
        """``x: [N, F_in]``, ``edge_index: [2, E]`` -> ``[num_dst or N, F_out]``."""
        n = x.shape[0] if num_dst is None else num_dst
        out = gcn_norm_aggregate(self.lin(x), edge_index, n, deg)
        return out + self.bias if self.bias is not None else out


class GCN(GraphSAGE):
    """L-layer GCN producing class logits (same call signature as :class:`GraphSAGE`).

    Args:
        in_channels: F.
        hidden_channels: hidden width.
        out_channels: number of classes.
        num_layers: L (>= 1).
        dropout: dropout between layers.
    """

    def make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
        return GCNConv(in_channels, out_channels)

    def conv_extras(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, ...]:
        # in-degree + self-loop of every node, from the untrimmed subgraph (exact under trimming)
        return (torch.bincount(edge_index[1], minlength=x.shape[0]) + 1,)
