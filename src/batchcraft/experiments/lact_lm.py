"""Reproduce the LaCT LM claim at laptop scale: per-position loss beyond the attention window.

Paper (Zhang et al., "Test-Time Training Done Right", arXiv 2505.23884, Fig. 5): a hybrid of
large-chunk TTT and sliding-window attention keeps lowering the loss at positions beyond the
window, where the SWA-only Transformer plateaus, and approaches full attention. Here:
parameter-matched tiny models (LaCT with Muon, LaCT with momentum, SWA-only, full attention)
trained on the same byte budget of the Python standard library, context = 4 x window.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric
from batchcraft.registry import register_experiment

MODELS = ("lact_muon", "lact_momentum", "swa", "full_attention", "ttt_linear_mb16")


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(preset="tiny", window=32, context=128, batch=8, steps=120, lr=3e-3,
                    warmup=10, eval_batches=8, max_bytes=2_000_000)  # fmt: skip
    return dict(preset="small", window=128, context=512, batch=16, steps=2000, lr=2e-3,
                warmup=100, eval_batches=32, max_bytes=20_000_000)  # fmt: skip


def _configs(st: dict[str, Any]) -> dict[str, Any]:
    from batchcraft.models.lact_config import get_preset
    from batchcraft.models.lact_lm import (
        full_attention_baseline,
        swa_baseline,
        ttt_linear_baseline,
    )

    w = st["window"]
    base = get_preset(st["preset"], chunk_size=w, window_size=w)
    return {
        "lact_muon": replace(base, use_muon=True),
        "lact_momentum": base,
        "swa": swa_baseline(base),
        "full_attention": full_attention_baseline(base),
        "ttt_linear_mb16": ttt_linear_baseline(base),  # small-chunk TTT (mini-batch 16) + SWA
    }


@register_experiment(
    "lact-lm",
    paper="Test-Time Training Done Right (LaCT), arXiv 2505.23884",
    claim="LaCT + sliding-window attention lowers the loss beyond the window vs SWA-only, "
    "approaching full attention (Fig. 5)",
    quick_minutes=5,
    full_setting="lact_small (d 256, 4 layers), C = W = 128, context 512, 2000 steps x 16 windows",
    order=20,
)
def run(ctx: ExperimentContext) -> ExperimentResult:
    from batchcraft.data.text import ByteBatches, load_corpus
    from batchcraft.models.lact_lm import count_parameters
    from batchcraft.recipes.lm import LMTrainSettings, build_lm, evaluate, train_lm
    from batchcraft.utils.plot import pyplot

    st = _settings(ctx.quick)
    cfgs = _configs(st)
    w, t = st["window"], st["context"]
    train_c = load_corpus(split="train", max_bytes=st["max_bytes"])
    val_c = load_corpus(split="val", max_bytes=max(st["max_bytes"] // 10, 200_000))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: intra-op threads only add synchronisation
    curves: dict[str, list[list[float]]] = {m: [] for m in MODELS}
    hist: dict[str, list[list[float]]] = {m: [] for m in MODELS}
    vals: dict[str, list[float]] = {m: [] for m in MODELS}
    beyond: dict[str, list[float]] = {m: [] for m in MODELS}
    within: dict[str, list[float]] = {m: [] for m in MODELS}
    params = {m: count_parameters(c) for m, c in cfgs.items()}
    try:
        for seed in ctx.seeds:
            for name, cfg in cfgs.items():
                model = build_lm(cfg, seed, ctx.device)
                s = LMTrainSettings(steps=st["steps"], batch_size=st["batch"], context=t, lr=st["lr"],
                                  warmup=st["warmup"], seed=seed, eval_batches=st["eval_batches"])  # fmt: skip
                tr = ByteBatches(train_c, batch_size=st["batch"], context=t, seed=seed)
                va = ByteBatches(val_c, batch_size=st["batch"], context=t, seed=seed)
                with ctx.progress(st["steps"], f"{name} seed {seed}") as bar:
                    res = train_lm(model, tr, s, on_step=lambda i, lo, tps: bar.advance(1, loss=lo))
                ev = evaluate(model, va.sequential(st["eval_batches"]))
                pp = ev["per_position"]
                curves[name].append(pp)
                hist[name].append([h["loss"] for h in res["history"]])
                vals[name].append(ev["loss"])
                beyond[name].append(sum(pp[w:]) / len(pp[w:]))
                within[name].append(sum(pp[:w]) / w)
                ctx.log(f"{name}: val {ev['loss']:.4f} nats/byte, beyond W {beyond[name][-1]:.4f}")
    finally:
        torch.set_num_threads(threads)

    mean = {m: sum(v) / len(v) for m, v in beyond.items()}
    mean_in = {m: sum(v) / len(v) for m, v in within.items()}
    best_lact = min(("lact_muon", "lact_momentum"), key=lambda m: mean[m])
    gain = mean["swa"] - mean[best_lact]  # > 0: LaCT better than SWA beyond the window
    gain_in = mean_in["swa"] - mean_in[best_lact]  # the same inside the window (no memory needed)
    long_range = gain - gain_in  # > 0: the advantage grows once tokens leave the window
    gap = mean["swa"] - mean["full_attention"]
    closed = gain / gap if gap > 1e-9 else float("nan")
    near_full = mean[best_lact] <= mean["full_attention"] + 0.5 * max(gap, 0.0) + 1e-9
    if gain > 0.01 and long_range > 0.005 and near_full:
        verdict = "reproduced"
    elif gain > 0:
        verdict = "partly"
    else:
        verdict = "not reproduced"

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    bucket = max(1, t // 32)
    for m in MODELS:
        avg = [sum(c[i] for c in curves[m]) / len(curves[m]) for i in range(t)]
        xs = [i + bucket / 2 for i in range(0, t, bucket)]
        ys = [sum(avg[i : i + bucket]) / len(avg[i : i + bucket]) for i in range(0, t, bucket)]
        ax.plot(xs, ys, label=f"{m} ({params[m] / 1e6:.2f}M)")
    ax.axvline(w, color="grey", ls="--", lw=1, label=f"window W = {w}")
    ax.set_xlabel("position in context [bytes]")
    ax.set_ylabel(f"validation loss [nats/byte], mean over {bucket}-byte buckets")
    ax.set_title("Per-position loss on held-out stdlib code (paper Fig. 5, laptop scale)")
    ax.legend(fontsize=8)
    p1 = ctx.save_figure(fig, "per_position_loss.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in MODELS:
        ax.plot(range(1, st["steps"] + 1), hist[m][0], label=m, lw=1)
    ax.set_xlabel(f"training step [batches of {st['batch']} x {t} bytes]")
    ax.set_ylabel("training loss [nats/byte]")
    ax.set_title(f"Training loss, same data order for every model (seed {ctx.seeds[0]})")
    ax.legend(fontsize=8)
    p2 = ctx.save_figure(fig, "train_loss.png")

    rows = "\n".join(
        f"| {m} | {params[m] / 1e6:.3f} | {sum(vals[m]) / len(vals[m]):.4f} | "
        f"{sum(within[m]) / len(within[m]):.4f} | {mean[m]:.4f} |"
        for m in MODELS
    )
    table = (
        "| model | params [M] | val loss [nats/byte] | loss at positions < W | loss at positions >= W |\n"
        "|---|---|---|---|---|\n" + rows
    )
    metrics = [Metric(f"val loss {m} [nats/byte]", vals[m]) for m in MODELS]
    metrics += [Metric(f"loss beyond window {m} [nats/byte]", beyond[m]) for m in MODELS]
    metrics.append(
        Metric(
            "SWA - best LaCT beyond window [nats/byte]",
            [a - b for a, b in zip(beyond["swa"], beyond[best_lact], strict=True)],
            paper="> 0 (LaCT below SWA after the window)",
        )
    )
    metrics.append(Metric("fraction of the SWA -> full-attention gap closed", [closed]))
    metrics.append(
        Metric(
            "long-range part of the gain: (SWA - LaCT) beyond W minus inside W [nats/byte]",
            [long_range],
            paper="> 0 (the gap opens after the window)",
        )
    )
    summary = (
        f"Beyond the {w}-byte window the best LaCT variant ({best_lact}) has loss "
        f"{mean[best_lact]:.4f} vs SWA-only {mean['swa']:.4f} and full attention "
        f"{mean['full_attention']:.4f} nats/byte: gain over SWA {gain:+.4f} beyond the window, "
        f"{gain_in:+.4f} inside it, so the long-range part of the gain is {long_range:+.4f}. "
        "Rule: reproduced if LaCT beats SWA beyond the window by > 0.01, the gain grows after "
        "the window (> 0.005) and LaCT is at least half way to full attention; partly if LaCT "
        "only beats SWA beyond the window. "
        + (
            "Full attention is the worst model here: at this budget it is under-trained, so "
            "the comparison mostly measures how fast each model learns local statistics. "
            if gap < 0
            else ""
        )
        + f"Small-chunk TTT-Linear (mini-batch 16) + SWA: {mean['ttt_linear_mb16']:.4f} beyond "
        "the window. "
        + f"Laptop scale: {st['steps']} steps of {st['batch']}x{t} bytes per model; the paper "
        "trains 760M-3B models on billions of tokens."
    )
    setting = (
        f"preset {st['preset']}, C = W = {w}, context {t}, batch {st['batch']}, steps "
        f"{st['steps']}, AdamW lr {st['lr']} (warm-up {st['warmup']}, cosine), byte-level "
        f"stdlib corpus (train {len(train_c) / 1e6:.1f} MB, val {len(val_c) / 1e6:.2f} MB), "
        f"seeds {ctx.seeds}; baselines widened (MLP) to LaCT's parameter count; 1 CPU thread"
    )
    return ExperimentResult(
        metrics=metrics,
        verdict=verdict,  # type: ignore[arg-type]
        summary=summary,
        plots=[p1, p2],
        tables=[table],
        setting=setting,
        data={"per_position": curves, "params": params, "beyond": beyond, "within": within},
    )
