"""``batchcraft lm``: train, evaluate and sample the LaCT language model (thin wrappers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def _corpus(text: list[Path] | None, split: str, max_bytes: int | None):  # type: ignore[no-untyped-def]
    from batchcraft.data.text import load_corpus

    return load_corpus(text or None, split=split, max_bytes=max_bytes)


def train(
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small, 760m, 3b.")] = "tiny",
    model: Annotated[str, typer.Option(help="lact, swa (sliding-window only) or full.")] = "lact",
    text: Annotated[
        list[Path] | None, typer.Option(help="Text files/folders (default: Python stdlib).")
    ] = None,
    context: Annotated[int, typer.Option(min=2, help="Training context T (bytes).")] = 256,
    chunk: Annotated[
        int | None, typer.Option(help="LaCT chunk size C (window = max(W, C)).")
    ] = None,
    window: Annotated[int | None, typer.Option(help="Attention window W.")] = None,
    muon: Annotated[bool, typer.Option(help="Muon (Newton-Schulz) fast-weight updates.")] = False,
    steps: Annotated[int, typer.Option(min=1)] = 200,
    batch: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option()] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adamw, or a batchcraft.optim name.")] = "adamw",
    warmup: Annotated[int, typer.Option(min=0)] = 20,
    seed: Annotated[int, typer.Option()] = 0,
    eval_every: Annotated[int, typer.Option(min=0, help="Validate every N steps (0: end).")] = 0,
    ckpt_every: Annotated[int, typer.Option(min=0, help="Checkpoint every N steps.")] = 50,
    max_bytes: Annotated[int, typer.Option(help="Corpus bytes to read per split.")] = 4_000_000,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoint/ inside).")] = Path("runs/lm"),
    resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint.")] = True,
) -> None:
    """Train a LaCT LM (or a baseline) on bytes, with exact resume from atomic checkpoints."""
    from dataclasses import replace

    from batchcraft.data.text import ByteBatches
    from batchcraft.models.lact_config import (
        full_attention_baseline,
        get_preset,
        swa_baseline,
    )
    from batchcraft.models.lact_lm import LaCTForCausalLM, count_parameters
    from batchcraft.models.lact_train import TrainSettings, init_distributed, train_lm
    from batchcraft.utils.io import write_json
    from batchcraft.utils.progress import console, progress_bar

    try:
        cfg = get_preset(preset, use_muon=muon)
        c = chunk or cfg.chunk_size
        w = window if window is not None else max(cfg.window_size or c, c)
        cfg = replace(cfg, chunk_size=c, window_size=w)
        cfg = {"lact": lambda x: x, "swa": swa_baseline, "full": full_attention_baseline}[model](
            cfg
        )
    except KeyError:
        console.print(f"[red]--model must be lact, swa or full, got {model!r}[/red]")
        raise typer.Exit(2) from None
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    s = TrainSettings(
        steps=steps, batch_size=batch, context=context, lr=lr, optimizer=optimizer,
        warmup=warmup, seed=seed, eval_every=eval_every, ckpt_every=ckpt_every,
    )  # fmt: skip
    tr = ByteBatches(
        _corpus(text, "train", max_bytes), batch_size=batch, context=context, seed=seed
    )
    va = ByteBatches(_corpus(text, "val", max_bytes), batch_size=batch, context=context, seed=seed)
    rank, world = init_distributed()  # no-op unless launched by torchrun with WORLD_SIZE > 1
    torch_model = LaCTForCausalLM(cfg)  # DDP broadcasts rank 0's initial weights
    console.print(
        f"{model} {preset}: {count_parameters(cfg) / 1e6:.2f}M params, C={c} W={cfg.window_size}, "
        f"{len(tr.corpus) / 1e6:.1f} MB train",
        highlight=False,
    )
    with progress_bar(steps, "lm train") as bar:
        bar.completed = 0

        def on_step(step: int, loss: float, tps: float) -> None:
            bar.advance(1, loss=loss, tok_s=round(tps))

        res = train_lm(torch_model, tr, s, val=va, out_dir=out, resume=resume, on_step=on_step)
    if rank == 0:
        write_json(out / "history.json", res)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if res["final_eval"] is not None:
        fe = res["final_eval"]
        console.print(f"val loss {fe['loss']:.4f} nats, {fe['bpb']:.4f} bits/byte", highlight=False)
    console.print(f"checkpoint: {out / 'checkpoint'}", highlight=False)


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `lm train`.")],
    text: Annotated[
        list[Path] | None, typer.Option(help="Text files/folders (default: stdlib).")
    ] = None,
    context: Annotated[int, typer.Option(min=2)] = 256,
    batch: Annotated[int, typer.Option(min=1)] = 8,
    batches: Annotated[int, typer.Option(min=1, help="Evaluation batches.")] = 8,
    max_bytes: Annotated[int, typer.Option()] = 4_000_000,
    out: Annotated[Path | None, typer.Option(help="Folder for per_position.csv/.png.")] = None,
) -> None:
    """Validation loss, bits per byte and the per-position loss curve (CSV + PNG)."""
    from batchcraft.data.text import ByteBatches
    from batchcraft.models.lact_train import evaluate as eval_lm
    from batchcraft.models.lact_train import load_lm_checkpoint
    from batchcraft.utils.io import write_json, write_text
    from batchcraft.utils.progress import console

    try:
        model, _ = load_lm_checkpoint(checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        va = ByteBatches(_corpus(text, "val", max_bytes), batch_size=batch, context=context)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    res = eval_lm(model, va.sequential(batches))
    console.print(
        f"loss {res['loss']:.4f} nats/byte, {res['bpb']:.4f} bits/byte over {res['tokens']} bytes",
        highlight=False,
    )
    folder = out or checkpoint.parent
    pp = res["per_position"]
    write_text(
        folder / "per_position.csv",
        "position,loss_nats\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(pp)),
    )
    write_json(folder / "eval.json", res)
    from batchcraft.utils.plot import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(pp)), pp)
    ax.set_xlabel("position in context [bytes]")
    ax.set_ylabel("loss [nats/byte]")
    ax.set_title("per-position validation loss")
    fig.savefig(folder / "per_position.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    console.print(f"wrote {folder / 'per_position.csv'} and per_position.png", highlight=False)


def generate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `lm train`.")],
    prompt: Annotated[str, typer.Option(help="Prompt text.")] = "def ",
    max_new_tokens: Annotated[int, typer.Option(min=0)] = 200,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample among the top k bytes.")] = 40,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Sample text with the constant-memory decode cache."""
    import torch

    from batchcraft.data.text import ByteTokenizer
    from batchcraft.models.lact_train import load_lm_checkpoint
    from batchcraft.utils.progress import console

    try:
        model, _ = load_lm_checkpoint(checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    tok = ByteTokenizer()
    ids = tok.encode(prompt)[None] if prompt else torch.zeros(1, 1, dtype=torch.long)
    out = model.eval().generate(
        ids, max_new_tokens, temperature=temperature,
        generator=torch.Generator().manual_seed(seed), top_k=top_k,
    )  # fmt: skip
    typer.echo(tok.decode(out[0]))
    del console


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval`` and ``generate`` to the ``lm`` group."""
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("generate")(generate)
