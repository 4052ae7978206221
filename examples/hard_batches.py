"""Hard-batch training on your own dataset: retrain the highest-loss mini-batches.

    python examples/hard_batches.py                 # Fashion-MNIST if installed, else digits
    python examples/hard_batches.py --tiny          # a few seconds

``train_high_loss`` takes any map-style dataset (here a ``TensorDataset``; put yours in its
place), any model, optimizer and ``loss_fn(model, batch)``. It cuts the data once into fixed
batches, trains every batch once, then keeps retraining the ``delta`` fraction with the highest
last-seen loss, within the step budget of ``epochs`` ordinary epochs. The run folder (``--out``)
holds a checkpoint after every round; the same command resumes it. ``delta=1`` is plain training
on the same fixed batches, the comparison printed at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from batchcraft.data.images import find_fashion_mnist, load_fashion_mnist
from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss
from batchcraft.selection import num_training_steps


def load_dataset(data_dir: Path | None, limit: int) -> tuple[TensorDataset, TensorDataset, str]:
    """(train, test, name): Fashion-MNIST pooled to 14x14, else scikit-learn digits (8x8)."""
    folder = find_fashion_mnist(data_dir)
    if folder is not None:
        s = load_fashion_mnist(folder)
        x_tr, x_te = F.avg_pool2d(s.x_train[:limit], 2), F.avg_pool2d(s.x_test[:2000], 2)
        return TensorDataset(x_tr, s.y_train[:limit]), TensorDataset(x_te, s.y_test[:2000]), s.name
    from batchcraft.data.images import load_digits_split  # needs scikit-learn

    s = load_digits_split(seed=0)
    return TensorDataset(s.x_train, s.y_train), TensorDataset(s.x_test, s.y_test), s.name


def make_model(side: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights for every delta
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * (side // 2) ** 2, classes),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding fashion-mnist/")
    p.add_argument("--delta", type=float, default=0.5, help="fraction of batches retrained")
    p.add_argument("--epochs", type=float, default=5.0, help="step budget, in epochs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("runs/example-hard-batches"))
    p.add_argument("--tiny", action="store_true", help="2 epochs of 1024 images")
    args = p.parse_args(argv)
    epochs = 2.0 if args.tiny else args.epochs
    train, test, name = load_dataset(args.data_dir, 1024 if args.tiny else 12000)
    x_test, y_test = test.tensors
    side, classes = x_test.shape[-1], int(y_test.max()) + 1
    steps = num_training_steps(len(train), args.batch_size, epochs)
    print(f"{name}: {len(train)} train images, {steps} optimizer steps for every delta")

    def accuracy(model: torch.nn.Module) -> float:  # called in eval mode under no_grad
        return (model(x_test).argmax(1) == y_test).float().mean().item()

    res = {}
    for delta in (args.delta, 1.0):
        model = make_model(side, classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        log = train_high_loss(
            model, supervised_loss(), opt, train, batch_size=args.batch_size, delta=delta,
            epochs=epochs, generator=torch.Generator().manual_seed(0), eval_fn=accuracy,
            out_dir=args.out / f"delta-{delta}", progress=True,
        )  # fmt: skip
        res[delta] = log.evals[-1][1]
        label = "plain (delta=1)" if delta == 1.0 else f"hard batches (delta={delta})"
        print(f"{label:26s} test accuracy {100 * res[delta]:.1f}% after {log.steps_done} steps")
    return {"accuracy": res, "classes": classes}


if __name__ == "__main__":
    main()
