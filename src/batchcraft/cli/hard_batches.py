"""``batchcraft selection hard-batches``: train a classifier with high-loss mini-batch selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from batchcraft.cli._common import positive, unit_fraction

__all__ = ["register"]


def hard_batches(
    dataset: Annotated[
        str,
        typer.Option(
            help="auto | fashion-mnist | digits | mixture (auto: Fashion-MNIST if installed)."
        ),
    ] = "auto",
    delta: Annotated[
        float,
        typer.Option(
            callback=unit_fraction, help="Fraction of batches retrained per round, in (0, 1]."
        ),
    ] = 0.5,
    epochs: Annotated[
        float,
        typer.Option(callback=positive, help="Step budget in 'epochs' of b optimizer steps."),
    ] = 3.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Mini-batch size m.")] = 64,
    lr: Annotated[
        float, typer.Option(callback=positive, help="SGD learning rate (momentum 0.9).")
    ] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the partition and the initial weights.")] = 0,
    selector: Annotated[
        str, typer.Option(help="hard (the method) | random (the control).")
    ] = "hard",
    refresh_every: Annotated[
        int | None,
        typer.Option(min=1, help="Re-score all batches (no-grad) every R selections."),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    full: Annotated[
        bool, typer.Option(help="Whole Fashion-MNIST at 28x28 (default: 8k subset, 14x14).")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data folder holding fashion-mnist/ (default: $BATCHCRAFT_DATA, ../shared/data)."
        ),
    ] = None,
    threads: Annotated[
        int, typer.Option(min=0, help="torch CPU threads (0: torch's default).")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (checkpoint/ inside; resumed from).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = True,
    allow_change: Annotated[
        bool, typer.Option(help="Resume even though settings differ from the checkpoint's.")
    ] = False,
) -> None:
    """Train a small ResNet-style CNN with hard batches; prints test accuracy per 'epoch' (b steps)."""
    import torch

    from batchcraft.experiments.hard_batches import _accuracy, load_split
    from batchcraft.models.small import SmallResNet
    from batchcraft.recipes.hard_batches import supervised_loss, train_high_loss
    from batchcraft.recipes.seeding import seeded
    from batchcraft.selection.hard import num_training_steps
    from batchcraft.utils.io import check_writable_dir
    from batchcraft.utils.progress import console

    if selector not in ("hard", "random"):
        raise typer.BadParameter(f"--selector must be hard or random, got {selector!r}")
    if threads:
        torch.set_num_threads(threads)
    if out is not None:
        check_writable_dir(out)
    split = load_split(dataset, quick=not full, seed=seed, data_dir=data_dir)
    with seeded(seed):
        if split.x_train.dim() == 2:
            model = SmallResNet(classes=split.num_classes, features=split.x_train.shape[1])
        else:
            model = SmallResNet(
                in_channels=split.x_train.shape[1], classes=split.num_classes, width=8
            )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps = num_training_steps(split.x_train.shape[0], batch_size, epochs)
    b = split.x_train.shape[0] // batch_size
    console.print(
        f"{split.name}: {split.x_train.shape[0]} train / {split.x_test.shape[0]} test, b={b} fixed "
        f"batches of {batch_size}; one 'epoch' = {b} optimizer steps, {steps} steps in total",
        highlight=False,
    )
    meta = {"data": {"dataset": split.name, "full": full, "seed": seed},
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9}}  # fmt: skip
    log = train_high_loss(
        model, supervised_loss(), opt, split.train_dataset(), batch_size=batch_size,
        delta=delta, epochs=epochs, generator=torch.Generator().manual_seed(seed),
        eval_fn=lambda m: _accuracy(m, split.x_test, split.y_test), selector=selector,
        refresh_every=refresh_every, out_dir=out, resume=resume, allow_change=allow_change,
        settings_meta=meta, progress=True,
        loader_kwargs={"num_workers": workers} if workers else None,
    )  # fmt: skip
    for step, acc in log.evals:
        console.print(
            f"step {step:6d} (epoch {step / b:5.2f}): test accuracy {100 * acc:.2f}%",
            highlight=False,
        )
    console.print(
        f"done: {log.steps_done} steps in {log.rounds} rounds; {log.samples_loaded} samples loaded; "
        f"selection {1e3 * log.select_time_s:.1f} ms, data {log.data_time_s:.2f} s, "
        f"steps {log.step_time_s:.2f} s",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the ``hard-batches`` command to the ``selection`` group."""
    app.command("hard-batches")(hard_batches)
