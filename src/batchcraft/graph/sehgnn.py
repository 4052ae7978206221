"""A SeHGNN-style encoder: per-metapath projection, transformer-style semantic fusion, MLP.

SeHGNN (Yang et al., "Simple and Efficient Heterogeneous Graph Neural Network", AAAI 2023)
pre-computes one mean-aggregated feature table per metapath (here
:func:`~batchcraft.graph.rphgnn_baselines.relation_wise_precompute`) and learns on them:

1. **feature projection**: each metapath ``P`` has its own MLP, ``h_P = MLP_P(X_P)`` ``[B, D]``;
2. **semantic fusion** (a transformer-style attention across the metapath axis):
   ``q_P = W_Q h_P``, ``k_P = W_K h_P``, ``v_P = W_V h_P``,
   ``α_{P,Q} = softmax_Q(q_P · k_Q)``, ``h'_P = β · Σ_Q α_{P,Q} v_Q + h_P`` (``β`` a learned scalar,
   initialised to 0, so training starts from plain concatenation);
3. the fused ``h'_P`` are concatenated ``[B, P·D]`` and classified by an MLP.

Written from the paper's description (no code taken). The per-path MLP and the output MLP use the
same Linear-PReLU-Dropout blocks and initialisation as :class:`~batchcraft.graph.rphgnn_model.RpHGNN`,
so the two encoders differ only in how they combine the groups.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["SeHGNN", "SemanticFusion", "naive_semantic_fusion"]


class SemanticFusion(nn.Module):
    """Transformer-style attention over the semantic (metapath) axis with a gated residual.

    Args:
        dim: ``D``, width of every metapath representation.
        qk_dim: width of queries and keys (default ``max(D // 4, 1)``).
    Shapes: h: ``[B, P, D]`` → ``[B, P, D]``.
    """

    def __init__(self, dim: int, *, qk_dim: int | None = None) -> None:
        super().__init__()
        qk = max(dim // 4, 1) if qk_dim is None else qk_dim
        if isinstance(qk, bool) or not isinstance(qk, int) or qk < 1:
            raise ValueError(f"qk_dim must be an int >= 1, got {qk_dim!r}")
        self.query = nn.Linear(dim, qk)
        self.key = nn.Linear(dim, qk)
        self.value = nn.Linear(dim, dim)
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, h: Tensor) -> Tensor:
        q, k, v = self.query(h), self.key(h), self.value(h)  # [B, P, qk], [B, P, qk], [B, P, D]
        att = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # [B, P, P]: row P attends over Q
        return self.beta * (att @ v) + h


def naive_semantic_fusion(fusion: SemanticFusion, h: Tensor) -> Tensor:
    """Loop reference of :class:`SemanticFusion` (per example, per metapath). h: ``[B, P, D]``."""
    out = torch.empty_like(h)
    for b in range(h.shape[0]):
        for p in range(h.shape[1]):
            q = fusion.query.weight @ h[b, p] + fusion.query.bias
            scores = torch.stack(
                [q @ (fusion.key.weight @ h[b, j] + fusion.key.bias) for j in range(h.shape[1])]
            )
            alpha = torch.exp(scores - scores.max())
            alpha = alpha / alpha.sum()
            mix = sum(
                alpha[j] * (fusion.value.weight @ h[b, j] + fusion.value.bias)
                for j in range(h.shape[1])
            )
            out[b, p] = fusion.beta * mix + h[b, p]
    return out


def _block(in_dim: int, out_dim: int, p: float) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim), nn.PReLU(num_parameters=1, init=0.25), nn.Dropout(p)]


class SeHGNN(nn.Module):
    """Per-metapath MLP, semantic fusion across metapaths, concatenation, output MLP.

    Args:
        group_shapes: ``{key: (n_j, m_j)}`` of every pre-computed table (``n_j·m_j`` inputs per
            metapath; relation-wise tables have ``n_j = 1``).
        hidden_channels: ``D``; out_channels: classes ``C``.
        num_group_layers: Linear-PReLU-Dropout blocks of each projection MLP (>= 1).
        num_output_layers: ``L2`` (``L2 - 1`` hidden blocks then the classifier, >= 1).
        input_dropout: element-wise dropout on every input table; dropout: after every block.
        qk_dim: width of the fusion's queries and keys (default ``D // 4``).
    """

    def __init__(
        self,
        group_shapes: Mapping[str, tuple[int, int]],
        hidden_channels: int,
        out_channels: int,
        *,
        num_group_layers: int = 2,
        num_output_layers: int = 2,
        input_dropout: float = 0.8,
        dropout: float = 0.7,
        qk_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not group_shapes:
            raise ValueError("group_shapes must name at least one metapath table")
        for name, v in (
            ("hidden_channels", hidden_channels),
            ("out_channels", out_channels),
            ("num_group_layers", num_group_layers),
            ("num_output_layers", num_output_layers),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for p in (input_dropout, dropout):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"dropout probabilities must be in [0, 1), got {p}")
        self.keys = list(group_shapes)
        self.input_dropout = nn.Dropout(input_dropout)
        self.projections = nn.ModuleDict()
        for j, (n, m) in group_shapes.items():
            layers = _block(n * m, hidden_channels, dropout)
            for _ in range(num_group_layers - 1):
                layers += _block(hidden_channels, hidden_channels, dropout)
            self.projections[j] = nn.Sequential(*layers)
        self.fusion = SemanticFusion(hidden_channels, qk_dim=qk_dim)
        width = hidden_channels * len(self.keys)
        out_layers: list[nn.Module] = []
        for _ in range(num_output_layers - 1):
            out_layers += _block(width, hidden_channels, dropout)
            width = hidden_channels
        out_layers.append(nn.Linear(width, out_channels))
        self.output = nn.Sequential(*out_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal weights, zero biases (as :class:`RpHGNN`); fusion gate ``β = 0``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.PReLU):
                nn.init.constant_(m.weight, 0.25)
        nn.init.zeros_(self.fusion.beta)

    def forward(self, groups: Mapping[str, Tensor]) -> Tensor:
        """groups: ``{key: [B, n_j, m_j]}`` → logits ``[B, C]``."""
        missing = [j for j in self.keys if j not in groups]
        if missing:
            raise ValueError(f"groups is missing keys {missing}; expected {self.keys}")
        hs = [
            self.projections[j](self.input_dropout(groups[j].float()).flatten(1))  # [B, D]
            for j in self.keys
        ]
        fused = self.fusion(torch.stack(hs, dim=1))  # [B, P, D]
        return self.output(fused.flatten(1))  # [B, P·D] → [B, C]
