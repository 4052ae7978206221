"""Train a small CNN on images with Adan, next to AdamW with the same schedule.

    python examples/adan_vision.py                  # Fashion-MNIST if installed, else digits
    python examples/adan_vision.py --tiny           # a few seconds

Adan is a drop-in ``torch.optim`` optimizer. The paper's rule of thumb, used here: a peak lr 5x
AdamW's and a weight decay 10x smaller. ``create_optimizer`` puts 1-D parameters (biases, norm
gains) in a group without weight decay, as timm does. Data: Fashion-MNIST from ``--data-dir``
(``<dir>/fashion-mnist``), ``$BATCHCRAFT_DATA`` or Debian's ``dataset-fashion-mnist``; otherwise
scikit-learn's digits; otherwise a synthetic image set.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from batchcraft.data.images import ImageSplit, find_fashion_mnist, load_fashion_mnist
from batchcraft.models.small import SmallCNN
from batchcraft.optim import create_optimizer


def load_images(data_dir: Path | None, *, limit: int) -> ImageSplit:
    """Fashion-MNIST, else digits (needs scikit-learn), else synthetic bars; ``limit`` train images."""
    folder = find_fashion_mnist(data_dir)
    if folder is not None:
        s = load_fashion_mnist(folder)
    else:
        try:
            from batchcraft.data.images import load_digits_split

            s = load_digits_split(seed=0)
        except ImportError:  # no scikit-learn: 4 classes of noisy bar images [N, 1, 8, 8]
            g = torch.Generator().manual_seed(0)
            y = torch.randint(0, 4, (2000,), generator=g)
            x = 0.5 * torch.randn(2000, 1, 8, 8, generator=g)
            for c in range(4):
                x[y == c, 0, 2 * c : 2 * c + 2, :] += 1.0  # class c: a bright band at rows 2c, 2c+1
            s = ImageSplit(x[:1600], y[:1600], x[1600:], y[1600:], "synthetic bars")
    return ImageSplit(
        s.x_train[:limit], s.y_train[:limit], s.x_test[:2000], s.y_test[:2000], s.name
    )


def accuracy(model: torch.nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(split: ImageSplit, name: str, lr: float, wd: float, steps: int, batch: int) -> float:
    """``steps`` of the optimizer ``name`` with warm-up + cosine decay; returns test accuracy."""
    torch.manual_seed(0)  # the same initial weights for both optimizers
    model = SmallCNN(classes=split.num_classes)
    opt = create_optimizer(model, name, lr=lr, weight_decay=wd)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, split.x_train.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])  # x: [B, 1, H, W]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return accuracy(model, split.x_test, split.y_test)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding fashion-mnist/")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak lr; Adan uses 5x")
    p.add_argument("--tiny", action="store_true", help="60 steps on 2000 images")
    args = p.parse_args(argv)
    steps = 60 if args.tiny else args.steps
    split = load_images(args.data_dir, limit=2000 if args.tiny else 60000)
    print(f"{split.name}: {split.x_train.shape[0]} train / {split.x_test.shape[0]} test images")
    res = {
        "adamw": train(split, "adamw", args.lr, 0.05, steps, args.batch),
        "adan": train(split, "adan", 5 * args.lr, 0.005, steps, args.batch),
    }
    for name, acc in res.items():
        print(f"{name:6s} test accuracy after {steps} steps: {100 * acc:.1f}%")
    return {**res, "classes": split.num_classes}


if __name__ == "__main__":
    main()
