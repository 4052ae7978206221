"""``batchcraft nvs train / eval / render``: the LaCT novel-view-synthesis toy from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

_CKPT = Path("runs/nvs/model.pt")


def train(
    preset: Annotated[str, typer.Option(help="tiny | lact_nvs_l14_d768_ttt2x | ...")] = "tiny",
    mixer: Annotated[
        str, typer.Option(help="lact | attention (full-attention baseline, equal params).")
    ] = "lact",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(min=1, help="Scenes per step.")] = 8,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 2e-3,
    scenes: Annotated[int, typer.Option(min=1, help="Training scenes rendered.")] = 256,
    views: Annotated[int, typer.Option(min=2, help="Views rendered per training scene.")] = 6,
    inputs: Annotated[
        str, typer.Option(help="Input-view counts drawn per step, e.g. '2,4'.")
    ] = "4",
    targets: Annotated[int, typer.Option(min=1, help="Target views per scene and step.")] = 2,
    size: Annotated[int, typer.Option(help="Image size in pixels (32-64).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the view sampler.")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: default).")] = 0,
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint file (written atomically; resumed when present).")
    ] = _CKPT,
) -> None:
    """Train LaCT-NVS (or the attention baseline) on procedural scenes; resumes from a checkpoint."""
    import torch

    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs import NVS_PRESETS, NVSModel, attention_baseline
    from batchcraft.models.nvs_train import TrainConfig, train_nvs
    from batchcraft.utils.progress import console

    if threads:
        torch.set_num_threads(threads)
    try:
        if preset not in NVS_PRESETS:
            raise ValueError(f"preset must be one of {sorted(NVS_PRESETS)}, got {preset!r}")
        cfg = NVS_PRESETS[preset](image_size=size)
        if mixer == "attention":
            cfg = attention_baseline(cfg)
        elif mixer != "lact":
            raise ValueError(f"mixer must be 'lact' or 'attention', got {mixer!r}")
        n_in = tuple(int(x) for x in inputs.split(","))
        tcfg = TrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, input_views=n_in,
            target_views=targets, seed=seed,
        )  # fmt: skip
        data = render_dataset("train", num_scenes=scenes, num_views=views, size=size)
        torch.manual_seed(seed)
        model = NVSModel(cfg)
        hist = train_nvs(model, data, tcfg, checkpoint=checkpoint)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    last = hist["losses"][-10:]
    console.print(
        f"done: {hist['steps']} steps, final loss {sum(last) / max(1, len(last)):.4f}; "
        f"checkpoint {checkpoint}",
        highlight=False,
    )


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from `nvs train`.")] = _CKPT,
    scenes: Annotated[int, typer.Option(min=1, help="Held-out test scenes.")] = 32,
    inputs: Annotated[str, typer.Option(help="Input-view counts to evaluate, e.g. '2,4,8'.")] = "4",
    targets: Annotated[int, typer.Option(min=1, help="Target views per scene.")] = 2,
) -> None:
    """PSNR / SSIM on held-out scenes (and the mean-colour baseline's PSNR)."""
    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs_train import evaluate_nvs, load_nvs
    from batchcraft.utils.progress import console

    if not checkpoint.exists():
        console.print(f"[red]checkpoint {checkpoint} not found; run `batchcraft nvs train`[/red]")
        raise typer.Exit(2)
    model = load_nvs(checkpoint)
    counts = [int(x) for x in inputs.split(",")]
    size = model.cfg.image_size
    data = render_dataset("test", num_scenes=scenes, num_views=max(counts) + targets, size=size)
    console.print("| inputs | PSNR [dB] | SSIM | mean-colour PSNR [dB] |\n|---|---|---|---|")
    for n in counts:
        r = evaluate_nvs(model, data, num_inputs=n, num_targets=targets)
        console.print(
            f"| {n} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['psnr_mean_colour']:.2f} |",
            highlight=False,
        )


def render(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from `nvs train`.")] = _CKPT,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("runs/nvs/grid.png"),
    scenes: Annotated[int, typer.Option(min=1, help="Test scenes (one block of rows each).")] = 3,
    inputs: Annotated[int, typer.Option(min=1, help="Input views.")] = 4,
    targets: Annotated[int, typer.Option(min=1, help="Target views.")] = 2,
) -> None:
    """Image grid per test scene: a row of inputs, a row of predictions, a row of ground truth."""
    import torch

    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs_train import load_nvs, save_grid, split_views
    from batchcraft.utils.progress import console

    if not checkpoint.exists():
        console.print(f"[red]checkpoint {checkpoint} not found; run `batchcraft nvs train`[/red]")
        raise typer.Exit(2)
    model = load_nvs(checkpoint)
    data = render_dataset(
        "test", num_scenes=scenes, num_views=inputs + targets, size=model.cfg.image_size
    )
    inp, tgt = split_views(data, torch.arange(scenes), inputs, targets, None)
    with torch.no_grad():
        pred = model.render(
            model.reconstruct(inp.images, inp.origins, inp.dirs), tgt.origins, tgt.dirs
        )
    rows = [r for s in range(scenes) for r in (inp.images[s], pred[s], tgt.images[s])]
    save_grid(out, rows)
    console.print(f"wrote {out} (rows per scene: inputs, prediction, ground truth)")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval`` and ``render`` to the ``nvs`` group."""
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("render")(render)
