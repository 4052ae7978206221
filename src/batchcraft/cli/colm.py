"""``batchcraft selection colm``: train a tiny LM on a data mixture with one CoLM arm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def colm(
    arm: Annotated[
        str,
        typer.Option(
            help="colm | colm-multi | colm-exact | colm-no-keep | colm-no-adam | structure-random"
            " | random-b | random-2b | random-4b | upsample-small | loss-select | gradnorm-select"
        ),
    ] = "colm",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 150,
    b: Annotated[int, typer.Option(min=1, help="Coreset (trained mini-batch) size.")] = 16,
    pool: Annotated[int, typer.Option(min=1, help="Pool size B the coreset is drawn from.")] = 32,
    d_model: Annotated[int, typer.Option(min=8, help="Width of the tiny LM.")] = 48,
    h: Annotated[int, typer.Option(min=1, help="Top-h sparsification per source.")] = 256,
    directions: Annotated[int, typer.Option(min=1, help="m of colm-multi.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of init, pools and directions.")] = 0,
    jsonl: Annotated[
        Path | None,
        typer.Option(help="JSONL with prompt/answer/source fields (default: synthetic mixture)."),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: default).")] = 0,
) -> None:
    """Train with one arm and print per-source held-out loss and exact match."""
    import torch
    from rich.table import Table

    from batchcraft.data.mixture import load_jsonl_mixture, make_mixture
    from batchcraft.recipes.colm import train_arm
    from batchcraft.selection.colm.arms import ARMS
    from batchcraft.utils.progress import console

    if arm not in ARMS:
        raise typer.BadParameter(f"arm must be one of {list(ARMS)}, got {arm!r}")
    if threads:
        torch.set_num_threads(threads)
    mix = load_jsonl_mixture(jsonl) if jsonl is not None else make_mixture(seed=0)
    res = train_arm(
        arm,
        mix,
        steps=steps,
        b=b,
        big=pool,
        d_model=d_model,
        h=h,
        directions=directions,
        seed=seed,
    )
    table = Table(title=f"{arm}: {steps} steps, b={b}, B={pool}")
    for col in ("source", "train size", "held-out loss [nats/token]", "exact match [%]"):
        table.add_column(col)
    for q, (loss, em) in res["eval"].items():
        table.add_row(mix.names[q], str(int(mix.counts[q])), f"{loss:.3f}", f"{100 * em:.1f}")
    console.print(table)
    console.print(
        f"median step: select {1e3 * res['select_s']:.1f} ms, train {1e3 * res['train_s']:.1f} ms;"
        f" small-source fraction of trained batches {res['small_frac']:.2f}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``colm`` to the ``selection`` group."""
    app.command("colm")(colm)
