"""The RpHGNN encoder and micro/macro-F1.

The encoder consumes the pre-computed groups ``{j: Z_j [B, n_j, m_j]}``: per group a hop mixer
(``U_j = W_j Z_j + c_j``, a kernel-1 Conv1d over the hop axis), a small MLP, a merge (concat or
mean) and an output MLP. Its training loop (Adam, shuffled mini-batches, early stopping) is the
recipe :mod:`batchcraft.recipes.rphgnn`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["HopMixer", "RpHGNN", "f1_scores"]


class HopMixer(nn.Module):
    """``U[b, f, :] = Σ_i W[f, i] Z[b, i, :] + c[f]`` (Conv1d ``n → F``, kernel 1), flattened.

    Args:
        num_hops: ``n`` (depth of the group); num_filters: ``F``.
    Shapes: z: ``[B, n, m]`` → ``[B, F·m]``.
    """

    def __init__(self, num_hops: int, num_filters: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_filters, num_hops))
        self.bias = nn.Parameter(torch.zeros(num_filters))
        nn.init.xavier_normal_(self.weight)

    def forward(self, z: Tensor) -> Tensor:
        u = torch.einsum("fi,bim->bfm", self.weight, z) + self.bias[None, :, None]  # [B, F, m]
        return u.flatten(1)

    def extra_repr(self) -> str:
        return f"hops={self.weight.shape[1]}, filters={self.weight.shape[0]}"


def _block(in_dim: int, out_dim: int, p: float) -> list[nn.Module]:
    return [nn.Linear(in_dim, out_dim), nn.PReLU(num_parameters=1, init=0.25), nn.Dropout(p)]


class RpHGNN(nn.Module):
    """Per-group hop mixer + MLP, merge, output MLP.

    Args:
        group_shapes: ``{key: (n_j, m_j)}`` (depth, width) of every group, in a fixed order.
        hidden_channels: width ``hid`` of every hidden layer.
        out_channels: number of classes ``C``.
        num_group_layers: ``L1`` (Linear-PReLU-Dropout blocks per group, >= 1).
        num_output_layers: ``L2`` (``L2 - 1`` hidden blocks then the classifier, >= 1).
        num_filters: hop-mixer filters ``F`` (1 for groups of depth 1).
        input_dropout: element-wise dropout on every group input.
        dropout: dropout after every hidden block.
        merge: ``"concat"`` or ``"mean"``.
    """

    def __init__(
        self,
        group_shapes: Mapping[str, tuple[int, int]],
        hidden_channels: int,
        out_channels: int,
        *,
        num_group_layers: int = 2,
        num_output_layers: int = 2,
        num_filters: int = 2,
        input_dropout: float = 0.8,
        dropout: float = 0.7,
        merge: str = "concat",
    ) -> None:
        super().__init__()
        if not group_shapes:
            raise ValueError("group_shapes must name at least one group")
        if merge not in ("concat", "mean"):
            raise ValueError(f"merge must be 'concat' or 'mean', got {merge!r}")
        if num_group_layers < 1 or num_output_layers < 1:
            raise ValueError(
                f"num_group_layers and num_output_layers must be >= 1, got "
                f"{num_group_layers}, {num_output_layers}"
            )
        for p in (input_dropout, dropout):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"dropout probabilities must be in [0, 1), got {p}")
        for name, v in (
            ("hidden_channels", hidden_channels),
            ("out_channels", out_channels),
            ("num_filters", num_filters),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for j, shape in group_shapes.items():
            if len(shape) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in shape):
                raise ValueError(
                    f"group_shapes[{j!r}] must be (depth n_j >= 1, width m_j >= 1), got {shape!r}"
                )
        self.keys = list(group_shapes)
        self.merge = merge
        self.input_dropout = nn.Dropout(input_dropout)
        self.mixers = nn.ModuleDict()
        self.group_mlps = nn.ModuleDict()
        for j, (n, m) in group_shapes.items():
            f = 1 if n == 1 else num_filters
            self.mixers[j] = HopMixer(n, f)
            layers = _block(f * m, hidden_channels, dropout)
            for _ in range(num_group_layers - 1):
                layers += _block(hidden_channels, hidden_channels, dropout)
            self.group_mlps[j] = nn.Sequential(*layers)
        width = hidden_channels * (len(self.keys) if merge == "concat" else 1)
        out_layers: list[nn.Module] = []
        for _ in range(num_output_layers - 1):
            out_layers += _block(width, hidden_channels, dropout)
            width = hidden_channels
        out_layers.append(nn.Linear(width, out_channels))
        self.output = nn.Sequential(*out_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation: Xavier-normal weights and zero biases for every linear map
        (hop mixers included); PReLU slopes 0.25."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, HopMixer)):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.PReLU):
                nn.init.constant_(m.weight, 0.25)

    def forward(self, groups: Mapping[str, Tensor]) -> Tensor:
        """groups: ``{key: [B, n_j, m_j]}`` → logits ``[B, C]``."""
        missing = [j for j in self.keys if j not in groups]
        if missing:
            raise ValueError(f"groups is missing keys {missing}; expected {self.keys}")
        ys = []
        for j in self.keys:
            z = self.input_dropout(groups[j].float())
            ys.append(self.group_mlps[j](self.mixers[j](z)))  # [B, hid]
        y = torch.cat(ys, dim=1) if self.merge == "concat" else torch.stack(ys).mean(0)
        return self.output(y)


def f1_scores(pred: Tensor, target: Tensor, *, multilabel: bool = False) -> tuple[float, float]:
    """``(micro-F1, macro-F1)``.

    Args:
        pred, target: class ids ``[N]`` (single-label) or multi-hot ``[N, C]`` (``multilabel``).
            Macro averages over classes present in either (as scikit-learn); multi-label macro
            over all ``C`` columns.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must match")
    if multilabel:
        if pred.dim() != 2:
            raise ValueError("multilabel pred/target must be multi-hot [N, C]")
        p, t = pred.bool(), target.bool()
        tp = (p & t).sum(0).double()
        fp = (p & ~t).sum(0).double()
        fn = (~p & t).sum(0).double()
    else:
        if pred.dim() != 1:
            raise ValueError("single-label pred/target must be class ids [N]")
        classes = torch.unique(torch.cat([pred, target]))
        p = pred[:, None] == classes[None, :]
        t = target[:, None] == classes[None, :]
        tp = (p & t).sum(0).double()
        fp = (p & ~t).sum(0).double()
        fn = (~p & t).sum(0).double()
    denom = 2 * tp + fp + fn
    per_class = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    micro_den = float(2 * tp.sum() + fp.sum() + fn.sum())
    micro = float(2 * tp.sum()) / micro_den if micro_den > 0 else 0.0
    macro = float(per_class.mean()) if per_class.numel() else 0.0
    return micro, macro
