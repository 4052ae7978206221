"""Swap ``nn.LSTM`` for the layer-normalised ``LayerNormLSTM`` in an existing model.

    python examples/ln_lstm.py            # 400 steps of a long-memory task, both cells
    python examples/ln_lstm.py --tiny     # a few seconds

``LayerNormLSTM`` takes ``nn.LSTM``'s arguments, returns what it returns and names its weights the
same way, so the swap is one line, and an ``nn.LSTM`` state dict loads into it. With
``layer_norm=False`` it computes exactly what ``nn.LSTM`` computes (checked below). The task: read
a sequence of noisy numbers and say whether the first quarter sums to more than zero, which needs
memory across the whole sequence.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.nn import LayerNormLSTM


class Classifier(nn.Module):
    """A sequence classifier around any LSTM-like module: ``x: [B, T, 1]`` -> ``[B, 2]``."""

    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # [B, T, hidden]
        return self.head(out[:, -1])  # [B, 2]


def batch(g: torch.Generator, b: int, t: int) -> tuple[Tensor, Tensor]:
    x = torch.randn(b, t, 1, generator=g)  # [B, T, 1]
    y = (x[:, : t // 4, 0].sum(1) > 0).long()  # [B]
    return x, y


def train(rnn: nn.Module, hidden: int, steps: int, t: int) -> tuple[float, float]:
    """Train a classifier around ``rnn``; returns (first loss, mean loss of the last 10 steps)."""
    model = Classifier(rnn, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x, y = batch(g, 32, t)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], sum(losses[-10:]) / 10


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--length", type=int, default=60, help="sequence length T")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--tiny", action="store_true", help="150 steps of length 10")
    args = p.parse_args(argv)
    steps, t, h = (150, 10, 32) if args.tiny else (args.steps, args.length, args.hidden)

    # the drop-in promise: nn.LSTM's weights load, and layer_norm=False is nn.LSTM exactly
    torch.manual_seed(0)
    lstm = nn.LSTM(1, h, num_layers=2, batch_first=True)
    plain = LayerNormLSTM(1, h, num_layers=2, batch_first=True, layer_norm=False)
    plain.load_state_dict(lstm.state_dict())
    x = torch.randn(4, t, 1)
    torch.testing.assert_close(plain(x)[0], lstm(x)[0])
    print("LayerNormLSTM(layer_norm=False) == nn.LSTM with the same weights")

    results = {}
    for name, make in [
        ("nn.LSTM", lambda: nn.LSTM(1, h, num_layers=2, batch_first=True)),
        ("LayerNormLSTM", lambda: LayerNormLSTM(1, h, num_layers=2, batch_first=True)),
    ]:
        torch.manual_seed(0)
        first, last = train(make(), h, steps, t)
        results[name] = (first, last)
        print(f"{name:14s} loss {first:.3f} -> {last:.3f} after {steps} steps (chance: 0.693)")
    return results


if __name__ == "__main__":
    main()
