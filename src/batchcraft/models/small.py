"""Small reference models the reproductions train on a CPU (not part of any paper's method).

* :class:`SmallCNN`: two conv-ReLU-pool stages and a linear head (Adan on images).
* :class:`ByteTransformerLM`: a pre-norm causal Transformer over bytes (Adan on text).
* :class:`RNNReadout`: an LSTM/GRU (layer-normalised or not) with a linear read-out (LayerNorm).
* :class:`SmallResNet`: a stem and two residual stages with BatchNorm (hard batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM

__all__ = ["ByteTransformerLM", "RNNReadout", "SmallCNN", "SmallResNet"]


class SmallCNN(nn.Module):
    """``x: [B, 1, H, W]`` -> logits ``[B, classes]``: two conv-ReLU-pool stages and a linear head."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # [B, w, H/2, W/2]
        x = F.max_pool2d(F.relu(self.c2(x)), 2)  # [B, 2w, H/4, W/4]
        return self.head(x.mean(dim=(2, 3)))  # [B, classes]


class ByteTransformerLM(nn.Module):
    """Byte-level causal Transformer: ``ids: [B, T]`` -> logits ``[B, T, 256]`` (pre-norm)."""

    def __init__(self, d: int = 64, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 256)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        if t > self.pos.shape[0]:
            raise ValueError(f"sequence length {t} exceeds the model's context {self.pos.shape[0]}")
        mask = nn.Transformer.generate_square_subsequent_mask(t)  # [T, T]
        h = self.blocks(self.emb(ids) + self.pos[:t], mask=mask, is_causal=True)  # [B, T, d]
        return self.out(self.norm(h))


class RNNReadout(nn.Module):
    """RNN over ``x: [B, T, I]`` (or byte ids ``[B, T]`` with ``vocab``) and a linear read-out.

    Args:
        kind: ``"LSTM"``, ``"LN-LSTM"``, ``"GRU"`` or ``"LN-GRU"``.
        inp: input (or embedding) width.
        hidden: RNN width.
        out: read-out width.
        vocab: embed byte ids when > 0.
    """

    def __init__(self, kind: str, inp: int, hidden: int, out: int, vocab: int = 0) -> None:
        super().__init__()
        if kind not in ("LSTM", "LN-LSTM", "GRU", "LN-GRU"):
            raise ValueError(f"kind must be LSTM, LN-LSTM, GRU or LN-GRU, got {kind!r}")
        self.embed = nn.Embedding(vocab, inp) if vocab else None
        cls = LayerNormLSTM if "LSTM" in kind else LayerNormGRU
        self.rnn = cls(inp, hidden, batch_first=True, layer_norm=kind.startswith("LN"))
        self.head = nn.Linear(hidden, out)

    def forward(self, x: Tensor, every_step: bool) -> Tensor:
        """Logits at every step ``[B, T, out]`` or at the last one ``[B, out]``."""
        h = self.rnn(self.embed(x) if self.embed is not None else x)[0]  # [B, T, H]
        return self.head(h if every_step else h[:, -1])


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))


class SmallResNet(nn.Module):
    """Stem conv + two residual stages (``width``, ``2*width``) + global pool + linear.

    ``x: [B, C, H, W]`` -> logits ``[B, classes]``; any ``H, W >= 2``. With ``features`` set the
    input is a flat ``[B, F]`` vector and the net is a 2-layer MLP instead (synthetic data).
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, width: int = 16,
                 features: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if features is not None:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(features, 8 * width), nn.ReLU(), nn.Linear(8 * width, classes)
            )
            return
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            _Block(width, width, 1),
            _Block(width, 2 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
