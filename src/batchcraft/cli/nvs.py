"""``batchcraft nvs train / eval / render``: the LaCT novel-view-synthesis toy from the shell."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from batchcraft.cli._common import output_file, positive

__all__ = ["register"]

log = logging.getLogger("batchcraft.cli.nvs")

_OUT = Path("runs/nvs")
_CKPT = _OUT / "checkpoint"


def _style(name: str):  # type: ignore[no-untyped-def]
    from batchcraft.data.scenes import EASY_STYLE, SceneStyle

    styles = {"easy": EASY_STYLE, "classic": SceneStyle()}
    if name not in styles:
        raise typer.BadParameter(f"--style must be easy or classic, got {name!r}")
    return styles[name]


def _counts(text: str) -> list[int]:
    """``"2,4"`` -> ``[2, 4]``; every count an integer >= 1."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"must be comma-separated integers like '2,4', got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter(f"view counts must be >= 1, got {text!r}")
    return counts


def train(
    preset: Annotated[str, typer.Option(help="tiny | lact_nvs_l14_d768_ttt2x | ...")] = "tiny",
    mixer: Annotated[
        str, typer.Option(help="lact | attention (full-attention baseline, equal params).")
    ] = "lact",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(min=1, help="Scenes per step.")] = 8,
    lr: Annotated[float, typer.Option(callback=positive, help="AdamW peak learning rate.")] = 1e-3,
    style: Annotated[
        str,
        typer.Option(
            help="Scene style: easy (large, anti-aliased, low-contrast floor: learnable "
            "in CPU minutes) or classic (sharp 32 px checker, mostly noise)."
        ),
    ] = "easy",
    scenes: Annotated[int, typer.Option(min=1, help="Training scenes rendered.")] = 256,
    views: Annotated[int, typer.Option(min=2, help="Views rendered per training scene.")] = 6,
    inputs: Annotated[
        str, typer.Option(help="Input-view counts drawn per step, e.g. '2,4'.")
    ] = "4",
    targets: Annotated[int, typer.Option(min=1, help="Target views per scene and step.")] = 2,
    size: Annotated[int, typer.Option(min=8, max=256, help="Image size in pixels.")] = 32,
    seed: Annotated[int, typer.Option(help="Decides the weights and every step's views.")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: default).")] = 0,
    ckpt_every: Annotated[int, typer.Option(min=0, help="Checkpoint every N steps.")] = 100,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoint/ inside).")] = _OUT,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = True,
    allow_change: Annotated[
        bool, typer.Option(help="Resume even though settings differ from the checkpoint's.")
    ] = False,
) -> None:
    """Train LaCT-NVS (or the attention baseline) on procedural scenes, with exact resume."""
    import torch

    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs import NVS_PRESETS, attention_baseline
    from batchcraft.recipes.nvs import NVSTrainSettings, build_nvs, train_nvs
    from batchcraft.utils.io import check_writable_dir

    if threads:
        torch.set_num_threads(threads)
    if preset not in NVS_PRESETS:
        raise typer.BadParameter(f"--preset must be one of {sorted(NVS_PRESETS)}, got {preset!r}")
    if mixer not in ("lact", "attention"):
        raise typer.BadParameter(f"--mixer must be 'lact' or 'attention', got {mixer!r}")
    cfg = NVS_PRESETS[preset](image_size=size)
    if mixer == "attention":
        cfg = attention_baseline(cfg)
    tcfg = NVSTrainSettings(
        steps=steps, batch_size=batch_size, lr=lr, input_views=tuple(_counts(inputs)),
        target_views=targets, seed=seed, ckpt_every=ckpt_every,
    )  # fmt: skip
    if max(tcfg.input_views) + targets > views:
        raise typer.BadParameter(
            f"inputs + targets ({max(tcfg.input_views)} + {targets}) exceed --views ({views})"
        )
    check_writable_dir(out)
    data = render_dataset(
        "train", num_scenes=scenes, num_views=views, size=size, style=_style(style)
    )
    model = build_nvs(cfg, seed)
    meta = {"scenes": scenes, "views": views, "size": size, "style": style}
    hist = train_nvs(
        model, data, tcfg, out_dir=out, resume=resume, allow_change=allow_change,
        data_meta=meta, progress="nvs train",
    )  # fmt: skip
    last = hist["losses"][-10:]
    log.info(
        f"done: {hist['steps']} steps, final loss {sum(last) / max(1, len(last)):.4f}; "
        f"checkpoint {out / 'checkpoint'}"
    )


def evaluate(
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint folder from `nvs train` (OUT/checkpoint).")
    ] = _CKPT,
    scenes: Annotated[int, typer.Option(min=1, help="Held-out test scenes.")] = 32,
    inputs: Annotated[str, typer.Option(help="Input-view counts to evaluate, e.g. '2,4,8'.")] = "4",
    targets: Annotated[int, typer.Option(min=1, help="Target views per scene.")] = 2,
    style: Annotated[
        str, typer.Option(help="Scene style of the test scenes: easy or classic.")
    ] = "easy",
) -> None:
    """PSNR / SSIM on held-out scenes, with the updates-off ablation and mean colour."""
    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs_eval import evaluate_nvs
    from batchcraft.recipes.nvs import load_nvs

    counts = _counts(inputs)
    model = load_nvs(checkpoint)
    size = model.cfg.image_size
    data = render_dataset(
        "test", num_scenes=scenes, num_views=max(counts) + targets, size=size, style=_style(style)
    )
    lact = model.cfg.mixer == "lact"
    typer.echo(
        "| inputs | PSNR [dB] | SSIM | updates-off PSNR [dB] | mean-colour PSNR [dB] |\n"
        "|---|---|---|---|---|"
    )
    for n in counts:
        r = evaluate_nvs(model, data, num_inputs=n, num_targets=targets)
        off = (
            evaluate_nvs(model, data, num_inputs=n, num_targets=targets, update=False)["psnr"]
            if lact
            else float("nan")
        )
        typer.echo(
            f"| {n} | {r['psnr']:.2f} | {r['ssim']:.3f} | {off:.2f} | {r['psnr_mean_colour']:.2f} |"
        )


def render(
    checkpoint: Annotated[
        Path, typer.Option(help="Checkpoint folder from `nvs train` (OUT/checkpoint).")
    ] = _CKPT,
    out: Annotated[Path, typer.Option(callback=output_file, help="PNG to write.")] = Path(
        "runs/nvs/grid.png"
    ),
    scenes: Annotated[int, typer.Option(min=1, help="Test scenes (one block of rows each).")] = 3,
    inputs: Annotated[int, typer.Option(min=1, help="Input views.")] = 4,
    targets: Annotated[int, typer.Option(min=1, help="Target views.")] = 2,
    style: Annotated[
        str, typer.Option(help="Scene style of the test scenes: easy or classic.")
    ] = "easy",
) -> None:
    """Image grid per test scene: a row of inputs, a row of predictions, a row of ground truth."""
    import torch

    from batchcraft.data.scenes import render_dataset
    from batchcraft.models.nvs_eval import save_grid, split_views
    from batchcraft.recipes.nvs import load_nvs

    model = load_nvs(checkpoint)
    data = render_dataset(
        "test",
        num_scenes=scenes,
        num_views=inputs + targets,
        size=model.cfg.image_size,
        style=_style(style),
    )
    inp, tgt = split_views(data, torch.arange(scenes), inputs, targets, None)
    with torch.no_grad():
        pred = model.render(
            model.reconstruct(inp.images, inp.origins, inp.dirs), tgt.origins, tgt.dirs
        )
    rows = [r for s in range(scenes) for r in (inp.images[s], pred[s], tgt.images[s])]
    save_grid(out, rows)
    log.info(f"wrote {out} (rows per scene: inputs, prediction, ground truth)")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval`` and ``render`` to the ``nvs`` group."""
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("render")(render)
