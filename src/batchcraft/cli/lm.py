"""``batchcraft lm``: train, evaluate and sample the LaCT language model (thin wrappers over
:mod:`batchcraft.recipes.lm`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from batchcraft.cli._common import finite, positive, probability

__all__ = ["register"]

log = logging.getLogger("batchcraft.cli.lm")

TextOpt = Annotated[
    list[Path] | None,
    typer.Option(help="Text files/folders to train on (default: the Python standard library)."),
]
TaskOpt = Annotated[
    str,
    typer.Option(
        help="text (next-byte LM) or recall (multi-query associative recall with every "
        "key/value pair beyond the windowed layers' reach; only the answers are scored)."
    ),
]
PairsOpt = Annotated[
    int, typer.Option(min=1, max=63, help="Recall task: key/value pairs (and queries) per row.")
]
GapOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Recall task: filler tokens between the pairs and the queries (default: "
        "layers x (W - 1), the least that no stack of windowed layers can bridge).",
    ),
]
TttOpt = Annotated[
    str,
    typer.Option(
        help="on, or off: fast weights never update (the TTT branch is the static SwiGLU of "
        "the same parameters): the ablation of test-time training."
    ),
]


def _ttt_flag(ttt: str) -> bool:
    if ttt not in ("on", "off"):
        raise typer.BadParameter(f"--ttt must be on or off, got {ttt!r}")
    return ttt == "on"


def _recall_task(pairs: int, gap: int | None, window: int, num_layers: int) -> Any:
    """The recall task for a model of ``num_layers`` layers of attention window ``window``."""
    from batchcraft.data.synthetic import RecallTask

    if gap is not None:
        return RecallTask(num_pairs=pairs, gap=gap)
    return RecallTask.for_window(window=window, num_layers=num_layers, num_pairs=pairs)


def _log_diagnostics(step: int | str, ev: dict[str, Any]) -> None:
    from batchcraft.recipes.lm import format_diagnostics

    acc = f", accuracy {ev['accuracy']:.3f}" if "accuracy" in ev else ""
    line = format_diagnostics(ev.get("ttt", []))
    log.info(
        f"{step}: val loss {ev['loss']:.4f}{acc}" + (f"; fast weights: {line}" if line else "")
    )


def train(
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small, 760m, 3b.")] = "tiny",
    model: Annotated[str, typer.Option(help="lact, swa (sliding-window only) or full.")] = "lact",
    text: TextOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A `batchcraft data prepare` folder of token shards (instead of "
            "--text); the model's vocabulary follows its tokenizer."
        ),
    ] = None,
    val_text: Annotated[
        list[Path] | None,
        typer.Option(help="Validation text (default: split off --text, see --val-fraction)."),
    ] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            callback=probability,
            help="Share of --text held out for validation: whole files by a hash of their "
            "path, or the end of every file when that leaves a side empty (one file).",
        ),
    ] = 0.05,
    context: Annotated[
        int, typer.Option(min=2, help="Training context T (tokens; --task recall sets it).")
    ] = 256,
    chunk: Annotated[
        int | None, typer.Option(min=1, help="LaCT chunk size C (default: the preset's).")
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(min=0, help="Attention window W (default: max(preset W, C); 0: no SWA)."),
    ] = None,
    muon: Annotated[bool, typer.Option(help="Muon (Newton-Schulz) fast-weight updates.")] = False,
    inner_lr: Annotated[
        float | None,
        typer.Option(
            callback=lambda v: None if v is None else positive(v),
            help="LaCT inner step on the chunk-mean inner loss (default: the preset's).",
        ),
    ] = None,
    ttt: TttOpt = "on",
    task: TaskOpt = "text",
    pairs: PairsOpt = 8,
    gap: GapOpt = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps in total.")] = 200,
    batch: Annotated[
        int, typer.Option(min=1, help="Windows per step, over all ranks (global batch).")
    ] = 8,
    lr: Annotated[float, typer.Option(callback=positive, help="Peak learning rate.")] = 1e-3,
    schedule: Annotated[
        str,
        typer.Option(help="cosine (paper), wsd or constant; wsd/constant runs can be extended."),
    ] = "cosine",
    optimizer: Annotated[str, typer.Option(help="adamw, or a batchcraft.optim name.")] = "adamw",
    warmup: Annotated[int, typer.Option(min=0, help="Linear warm-up steps.")] = 20,
    seed: Annotated[
        int, typer.Option(help="Decides the initial weights, the data order and all sampling.")
    ] = 0,
    eval_every: Annotated[int, typer.Option(min=0, help="Validate every N steps (0: end).")] = 0,
    eval_batches: Annotated[int, typer.Option(min=1, help="Validation batches.")] = 4,
    ckpt_every: Annotated[int, typer.Option(min=0, help="Checkpoint every N steps.")] = 50,
    max_bytes: Annotated[int, typer.Option(min=1, help="Corpus bytes read per split.")] = 4_000_000,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    parallel: Annotated[
        str,
        typer.Option(
            help="Under torchrun: ddp (replicated) or fsdp (FSDP2, sharded weights, "
            "gradients and optimizer state; bf16 compute on GPU)."
        ),
    ] = "ddp",
    activation_checkpointing: Annotated[
        bool, typer.Option(help="Recompute each block in the backward pass (less memory).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoint/ inside).")] = Path("runs/lm"),
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/checkpoint when it exists.")
    ] = True,
    allow_change: Annotated[
        bool, typer.Option(help="Resume even though settings differ from the checkpoint's.")
    ] = False,
) -> None:
    """Train a LaCT LM (or a baseline) on bytes, with exact, guarded resume."""
    from dataclasses import replace

    from batchcraft.data.text import ByteBatches, load_text_splits
    from batchcraft.models.lact_config import get_preset
    from batchcraft.models.lact_lm import count_parameters, full_attention_baseline, swa_baseline
    from batchcraft.recipes.dist import destroy_distributed, init_distributed
    from batchcraft.recipes.lm import LMTrainSettings, build_lm, train_lm
    from batchcraft.utils.io import check_writable_dir

    builders = {"lact": lambda x: x, "swa": swa_baseline, "full": full_attention_baseline}
    if model not in builders:
        raise typer.BadParameter(f"--model must be lact, swa or full, got {model!r}")
    updates = _ttt_flag(ttt)
    if model != "lact" and (not updates or inner_lr is not None):
        raise typer.BadParameter(f"--ttt off and --inner-lr need --model lact, not {model!r}")
    cfg = get_preset(preset, use_muon=muon, ttt_updates=updates)
    if inner_lr is not None:
        cfg = replace(cfg, inner_lr=inner_lr)
    c = chunk or cfg.chunk_size
    w = window if window is not None else max(cfg.window_size or c, c)
    recall = None
    if task == "recall":
        if text or val_text or data is not None:
            raise typer.BadParameter("--task recall generates its data: drop --text/--data")
        recall = _recall_task(pairs, gap, w or c, cfg.num_layers)
        context = recall.length - 1
    cfg = builders[model](replace(cfg, chunk_size=c, window_size=w))
    s = LMTrainSettings(
        steps=steps, batch_size=batch, context=context, lr=lr, optimizer=optimizer,
        schedule=schedule, warmup=warmup, seed=seed, eval_every=eval_every,
        eval_batches=eval_batches, ckpt_every=ckpt_every, parallel=parallel,
        activation_checkpointing=activation_checkpointing, task=task,
    )  # fmt: skip
    check_writable_dir(out)  # before reading the corpus or building the model
    dist = init_distributed(device)
    tokenizer = None
    tr: Any
    va: Any
    if recall is not None:
        from batchcraft.recipes.lm import RecallSource

        tr = RecallSource(recall, batch, seed=seed)
        va = RecallSource(recall, batch, seed=1_000_003 + seed)  # held-out rows
        sizes = (
            f"recall: {recall.num_pairs} pairs >= {recall.min_distance} tokens before their "
            f"queries, {recall.length} tokens a row, chance accuracy "
            f"{recall.chance_accuracy:.4f} (1/{recall.num_values}), chance loss "
            f"{recall.chance_loss:.3f} nats"
        )
        data_meta = {"task": "recall", "num_pairs": recall.num_pairs, "gap": recall.gap,
                     "num_keys": recall.num_keys, "num_values": recall.num_values}  # fmt: skip
        bytes_per_token = 1.0
    elif data is not None:
        if text or val_text:
            raise typer.BadParameter("give either --data (token shards) or --text, not both")
        from batchcraft.data.shards import TokenShards

        shards = TokenShards(data)
        cfg = replace(cfg, vocab_size=shards.vocab_size)
        shards.check_vocab(cfg.vocab_size)
        if batch % dist.world_size:
            raise typer.BadParameter(f"--batch {batch} must divide over {dist.world_size} ranks")
        rows = batch // dist.world_size
        tr = shards.batches(rows, context, seed=seed, rank=dist.rank, world_size=dist.world_size)
        va = shards.batches(rows, context, split="val", seed=seed, rank=0, world_size=1)
        tokenizer = shards.tokenizer
        sizes = f"{shards.split('train').__len__() / 1e6:.2f}M train tokens"
        data_meta = {"data": str(data), "manifest": shards.manifest.get("inputs_hash"),
                     "tokenizer": shards.manifest["tokenizer"]["name"]}  # fmt: skip
        bytes_per_token = shards.bytes_per_token("val")
    else:
        tr_c, va_c = load_text_splits(
            text, val_text=val_text, val_fraction=val_fraction, max_bytes=max_bytes
        )
        tr = ByteBatches(tr_c, batch_size=batch, context=context, seed=seed)
        va = ByteBatches(va_c, batch_size=batch, context=context, seed=seed)
        sizes = f"{len(tr_c) / 1e6:.2f} MB train, {len(va_c) / 1e6:.3f} MB val"
        data_meta = {
            "text": [str(p) for p in text or []] or "stdlib",
            "val_text": [str(p) for p in val_text or []],
            "val_fraction": val_fraction,
            "max_bytes": max_bytes,
        }
        bytes_per_token = 1.0
    try:
        lm = build_lm(cfg, seed, dist.device)  # DDP broadcasts rank 0's initial weights
        if dist.is_main:
            log.info(
                f"{model} {preset}: {count_parameters(cfg) / 1e6:.2f}M params, C={c} "
                f"W={cfg.window_size}, {sizes}"
            )
        res = train_lm(
            lm, tr, s, val=va, out_dir=out, resume=resume, allow_change=allow_change,
            data_meta=data_meta, progress="lm train" if dist.is_main else None, dist=dist,
            tokenizer=tokenizer, bytes_per_token=bytes_per_token,
            on_eval=(lambda i, ev: _log_diagnostics(f"step {i}", ev)) if dist.is_main else None,
        )  # fmt: skip
    finally:
        destroy_distributed()
    if dist.is_main:
        if res["final_eval"] is not None:
            fe = res["final_eval"]
            if recall is not None:
                log.info(
                    f"answer accuracy {fe['accuracy']:.4f} (chance {recall.chance_accuracy:.4f}), "
                    f"answer loss {fe['loss']:.4f} nats (chance {recall.chance_loss:.3f})"
                )
            else:
                log.info(f"val loss {fe['loss']:.4f} nats/token, {fe['bpb']:.4f} bits/byte")
        log.info(f"checkpoint: {out / 'checkpoint'}")


def _save_curve_plot(folder: Path, per_position: list[float]) -> Path | None:
    """per_position.png, or ``None`` (with one log line) when matplotlib is not installed."""
    from batchcraft._capabilities import has_module

    if not has_module("matplotlib"):
        log.warning("matplotlib is not installed (pip install 'batchcraft[plot]'): no PNG written")
        return None
    from batchcraft.utils.plot import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(per_position)), per_position)
    ax.set_xlabel("position in context [bytes]")
    ax.set_ylabel("loss [nats/byte]")
    ax.set_title("per-position validation loss")
    path = folder / "per_position.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `lm train`.")],
    text: Annotated[
        list[Path] | None,
        typer.Option(help="Evaluate all of these files (default: the stdlib validation split)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Evaluate the validation split of a `data prepare` folder instead."),
    ] = None,
    context: Annotated[int, typer.Option(min=2, help="Evaluation context T.")] = 256,
    batch: Annotated[int, typer.Option(min=1, help="Windows per batch.")] = 8,
    batches: Annotated[int, typer.Option(min=1, help="Evaluation batches (at most).")] = 8,
    max_bytes: Annotated[int, typer.Option(min=1, help="Bytes of text read.")] = 4_000_000,
    ttt: TttOpt = "on",
    task: TaskOpt = "text",
    pairs: PairsOpt = 8,
    gap: GapOpt = None,
    seed: Annotated[int, typer.Option(help="Recall task: seed of the evaluation rows.")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Folder for eval.json, per_position.csv/.png.")
    ] = None,
) -> None:
    """Validation loss, bits per byte (or recall accuracy), the per-position loss curve (CSV,
    and PNG) and the fast weights' drift and update size per LaCT layer."""
    from batchcraft.data.text import ByteBatches, load_corpus
    from batchcraft.recipes.lm import evaluate as eval_lm
    from batchcraft.recipes.lm import load_lm, with_ttt_updates
    from batchcraft.utils.io import check_writable_dir, write_json, write_text

    updates = _ttt_flag(ttt)
    if task not in ("text", "recall"):
        raise typer.BadParameter(f"--task must be text or recall, got {task!r}")
    folder = out or checkpoint.parent
    check_writable_dir(folder)
    model = load_lm(checkpoint)
    if not updates:
        if not (model.config.use_ttt and model.config.mixer == "lact"):
            raise typer.BadParameter("--ttt off needs a LaCT model; this one has no fast weights")
        model = with_ttt_updates(model, False)
    recall = None
    if task == "recall":
        if text or data is not None:
            raise typer.BadParameter("--task recall generates its data: drop --text/--data")
        from batchcraft.recipes.lm import RecallSource

        cfg = model.config
        recall = _recall_task(pairs, gap, cfg.window_size or cfg.chunk_size, cfg.num_layers)
        res = eval_lm(model, RecallSource(recall, batch, seed=seed).sequential(batches),
                      diagnostics=True)  # fmt: skip
    elif data is not None:
        if text:
            raise typer.BadParameter("give either --data (token shards) or --text, not both")
        from batchcraft.data.shards import TokenShards

        shards = TokenShards(data)
        shards.check_vocab(model.config.vocab_size)
        va_s = shards.batches(batch, context, split="val")
        res = eval_lm(model, va_s.sequential(batches), bytes_per_token=shards.bytes_per_token(),
                      diagnostics=True)  # fmt: skip
    else:
        if model.config.vocab_size != 256:
            raise typer.BadParameter(
                f"this model has a {model.config.vocab_size}-token vocabulary: evaluate it on "
                "its token shards with --data (--text is byte level)"
            )
        corpus = load_corpus(text, split="all" if text else "val", max_bytes=max_bytes)
        va = ByteBatches(corpus, batch_size=batch, context=context)
        res = eval_lm(model, va.sequential(batches), diagnostics=True)
    if recall is not None:
        log.info(
            f"recall ({recall.num_pairs} pairs >= {recall.min_distance} tokens back): answer "
            f"accuracy {res['accuracy']:.4f} (chance {recall.chance_accuracy:.4f}), answer loss "
            f"{res['loss']:.4f} nats (chance {recall.chance_loss:.3f}) over {res['tokens']} answers"
        )
    else:
        log.info(
            f"loss {res['loss']:.4f} nats/token, {res['bpb']:.4f} bits/byte over "
            f"{res['tokens']} tokens"
        )
    if res.get("ttt"):
        from batchcraft.recipes.lm import format_diagnostics

        log.info(f"fast weights ({'updates on' if updates else 'updates off'}): "
                 f"{format_diagnostics(res['ttt'])}")  # fmt: skip
    pp = res["per_position"]
    write_text(
        folder / "per_position.csv",
        "position,loss_nats\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(pp)),
    )
    write_json(folder / "eval.json", res)
    png = _save_curve_plot(folder, pp)
    log.info(f"wrote {folder / 'per_position.csv'}" + (f" and {png.name}" if png else ""))


def generate(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `lm train`.")],
    prompt: Annotated[str, typer.Option(help="Prompt text.")] = "def ",
    max_new_tokens: Annotated[int, typer.Option(min=0, help="Tokens to sample.")] = 200,
    temperature: Annotated[
        float, typer.Option(min=0.0, callback=finite, help="0: greedy; else sampling.")
    ] = 0.8,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Sample among the k most likely tokens.")
    ] = 40,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Sample text with the constant-memory decode cache."""
    import torch

    from batchcraft.recipes.lm import load_lm, load_run_tokenizer

    model = load_lm(checkpoint)
    tok = load_run_tokenizer(checkpoint)
    start = tok.encode(prompt) if prompt else [tok.eos_id or 0]
    ids = torch.tensor([start], dtype=torch.long)
    out = model.generate(
        ids, max_new_tokens, temperature=temperature,
        generator=torch.Generator().manual_seed(seed), top_k=top_k,
    )  # fmt: skip
    typer.echo(tok.decode(out[0]))


def export(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint folder from `lm train`.")],
    out: Annotated[Path, typer.Option(help="Folder to write (model.safetensors + config.json).")],
    hf: Annotated[
        bool,
        typer.Option(
            help="A Hugging Face save_pretrained folder (AutoModelForCausalLM loads it "
            "after `import batchcraft.models.lact_hf`); needs transformers."
        ),
    ] = False,
) -> None:
    """Write one model.safetensors + config.json from a (possibly sharded) training checkpoint."""
    from batchcraft.recipes.lm import export_lm, load_lm
    from batchcraft.utils.io import check_writable_dir

    check_writable_dir(out.parent if out.parent != Path("") else Path("."))
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"--out {out} is a file; give a folder")
    if hf:
        from batchcraft._capabilities import has_transformers

        if not has_transformers():
            raise typer.BadParameter("--hf needs transformers: pip install 'batchcraft[hf]'")
        from batchcraft.models.lact_hf import save_hf
        from batchcraft.recipes.lm import load_run_tokenizer

        dest = save_hf(load_lm(checkpoint), out, overwrite=True)
        load_run_tokenizer(checkpoint).save(dest)  # AutoTokenizer reads it (BPE / HF kinds)
    else:
        dest = export_lm(checkpoint, out)
    log.info(f"wrote {dest}")


def plan(
    preset: Annotated[str, typer.Option(help="Model preset: tiny, small, 760m, 3b.")] = "3b",
    context: Annotated[int, typer.Option(help="Training context T (tokens per sequence).")] = 32768,
    gpus: Annotated[int, typer.Option(help="Number of GPUs (ranks).")] = 8,
    gpu_mem: Annotated[float, typer.Option(help="Memory of one GPU in GiB.")] = 80.0,
    batch: Annotated[
        int | None,
        typer.Option(help="Global batch in sequences (default: one per data-parallel group)."),
    ] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or adan.")] = "adamw",
    cp: Annotated[
        str | None,
        typer.Option(help="Chunk-parallel degrees to list, e.g. 1,2 (default: 1,2,4,8 that fit)."),
    ] = None,
) -> None:
    """Per-rank memory of ddp / fsdp, activation checkpointing and chunk parallelism; what fits."""
    from batchcraft.recipes.plan import plan_memory, plan_text

    degrees = None
    if cp is not None:
        try:
            degrees = [int(x) for x in cp.split(",")]
        except ValueError:
            raise typer.BadParameter(
                f"--cp must be integers separated by commas, got {cp!r}"
            ) from None
    rows = plan_memory(
        preset, context=context, gpus=gpus, gpu_mem_gib=gpu_mem, batch=batch,
        optimizer=optimizer.lower(), cp=degrees,
    )  # fmt: skip
    typer.echo(plan_text(rows, preset=preset, context=context, gpus=gpus, gpu_mem_gib=gpu_mem))


def register(app: typer.Typer) -> None:
    """Add ``train``, ``eval``, ``generate`` and ``export`` to the ``lm`` group."""
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("generate")(generate)
    app.command("export")(export)
    app.command("plan")(plan)
