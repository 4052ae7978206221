"""``batchcraft graph train``: neighbour-sampled GraphSAGE with a chosen feature path.

Thin: parses options into :class:`batchcraft.recipes.sage.SageTrainSettings` and calls
:func:`batchcraft.recipes.sage.run_training`. Prints per-epoch timing split into sample / gather /
transfer / compute / wait and validation accuracy, writes an atomic checkpoint after every epoch
and resumes from it (refused when settings changed, unless ``--allow-change``); at the end it
prints the final model's test accuracy.
Data parallel: ``torchrun --nproc-per-node N --no-python batchcraft graph train ...`` (each rank
trains on its own shard of the seeds; rank 0 prints and writes the files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from batchcraft.cli._common import positive

__all__ = ["register"]

log = logging.getLogger("batchcraft.cli.graph_sage")


def _parse_fanouts(text: str) -> list[int]:
    try:
        fan = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise typer.BadParameter(
            f"fan-outs must be comma-separated ints like 25,10 (got {text!r})"
        ) from e
    if not fan or any(f < 1 and f != -1 for f in fan):
        raise typer.BadParameter("each fan-out must be a positive int or -1 (all neighbours)")
    return fan


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``graph`` group."""

    @app.command("train")
    def train(
        dataset: Annotated[
            str,
            typer.Option(help="cora | citeseer | powerlaw | planted (synthetic ones are seeded)."),
        ] = "powerlaw",
        model: Annotated[str, typer.Option(help="sage (GraphSAGE, mean) | gcn.")] = "sage",
        num_nodes: Annotated[
            int, typer.Option(min=2, help="Nodes of a synthetic power-law graph.")
        ] = 100_000,
        avg_degree: Annotated[
            float, typer.Option(callback=positive, help="Mean degree of the power-law graph.")
        ] = 15.0,
        num_features: Annotated[
            int, typer.Option(min=1, help="Feature width F (synthetic).")
        ] = 128,
        fanouts: Annotated[
            str, typer.Option(help="Fan-out per hop, e.g. 25,10 (-1 = all).")
        ] = "25,10",
        batch_size: Annotated[int, typer.Option(min=1, help="Seed nodes per mini-batch.")] = 1024,
        feature_backend: Annotated[
            str, typer.Option(help="auto | cpu | staged | uva-triton | uva-view.")
        ] = "auto",
        pin: Annotated[str, typer.Option(help="auto | inplace | copy | none.")] = "auto",
        epochs: Annotated[
            int, typer.Option(min=1, help="Training epochs (raise it to continue a run).")
        ] = 3,
        hidden: Annotated[int, typer.Option(min=1, help="Hidden width.")] = 256,
        lr: Annotated[float, typer.Option(callback=positive, help="Adam learning rate.")] = 3e-3,
        dropout: Annotated[float, typer.Option(help="Dropout between layers.")] = 0.5,
        prefetch: Annotated[
            int, typer.Option(min=0, help="Batches prepared ahead (0 = sequential).")
        ] = 1,
        max_batches: Annotated[
            int,
            typer.Option(min=0, help="Stop each epoch after this many batches (0 = full epoch)."),
        ] = 0,
        seed: Annotated[
            int,
            typer.Option(
                min=0,
                help="Decides the synthetic graph, the starting weights and every epoch's "
                "sampling and dropout.",
            ),
        ] = 0,
        data_dir: Annotated[
            Path | None, typer.Option(help="Folder with cora.zip / citeseer.zip.")
        ] = None,
        out: Annotated[
            Path, typer.Option(help="Run folder (checkpoint/ and history.json inside).")
        ] = Path("runs/graph_sage"),
        resume: Annotated[
            bool, typer.Option(help="Continue from OUT/checkpoint when it exists.")
        ] = True,
        allow_change: Annotated[
            bool, typer.Option(help="Resume even though settings differ from the checkpoint's.")
        ] = False,
    ) -> None:
        """Train GraphSAGE with neighbour sampling; per-epoch time split by pipeline stage.

        Under torchrun (WORLD_SIZE > 1) trains data-parallel with DDP; rank 0 prints and saves.
        """
        from batchcraft.recipes.sage import SageTrainSettings, run_training

        settings = SageTrainSettings(
            dataset=dataset, model=model, num_nodes=num_nodes, avg_degree=avg_degree,
            num_features=num_features, fanouts=tuple(_parse_fanouts(fanouts)),
            batch_size=batch_size, backend=feature_backend, pin=pin, epochs=epochs, hidden=hidden,
            lr=lr, dropout=dropout, prefetch=prefetch, max_batches=max_batches or None, seed=seed,
            data_dir=data_dir,
        )  # fmt: skip
        history = run_training(
            settings, out_dir=out, resume=resume, allow_change=allow_change, progress=True
        )
        if history:
            last = history[-1]
            log.info(
                f"done: {len(history)} epochs, loss {last['loss']:.4f}, "
                f"val acc {last.get('val_acc', float('nan')):.4f}, "
                f"test acc {last.get('test_acc', float('nan')):.4f} -> {out}"
            )
