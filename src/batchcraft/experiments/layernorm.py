"""Reproduce "Layer Normalization" (Ba, Kiros, Hinton 2016): LN speeds up RNN training.

Three measurements, each LN vs no LN with the same initial weights, optimiser, lr and budget:

1. sequential image classification (Fashion-MNIST rows as time steps when the Debian package
   ``dataset-fashion-mnist`` is installed, sklearn digits otherwise): LSTM vs LN-LSTM, GRU vs LN-GRU;
2. a byte-level character LM on CPython standard-library sources: LSTM vs LN-LSTM, GRU vs LN-GRU;
3. the batch-size claim: an MLP with LayerNorm vs BatchNorm trained at batch 4 and 128.

"Faster training" is measured as the mean training loss over the whole run (area under the
curve: lower = reached low loss sooner) and the final held-out loss after the same number of steps.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.experiments._layernorm_data import digits_sequences, image_sequences, stdlib_text
from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric, Verdict
from batchcraft.models.small import RNNReadout
from batchcraft.nn.norm import LayerNorm
from batchcraft.registry import register_experiment

__all__ = ["digits_sequences", "run", "steps_to_threshold", "train_rnn"]

MODELS = ("LSTM", "LN-LSTM", "GRU", "LN-GRU")


def _init_(model: RNNReadout, g: torch.Generator) -> None:
    """Seeded init from a private generator; LN gains 1 and shifts 0 (identical shared weights)."""
    for name, p in model.named_parameters():
        with torch.no_grad():
            if ".ln_" in name:
                p.fill_(1.0 if "_weight_" in name else 0.0)
            else:
                bound = 1.0 / math.sqrt(p.shape[-1] if p.dim() > 1 else p.shape[0])
                if name.startswith("rnn."):
                    bound = 1.0 / math.sqrt(model.rnn.hidden_size)
                p.uniform_(-bound, bound, generator=g)


def train_rnn(
    kind: str,
    data: dict[str, Any],
    *,
    seed: int,
    steps: int,
    lr: float,
    batch: int,
    eval_every: int,
) -> dict[str, list[float]]:
    """Train one model with Adam; returns per-step training losses and periodic held-out losses."""
    g = torch.Generator().manual_seed(seed)
    lm = data["task"] == "lm"
    model = RNNReadout(kind, data["inp"], data["hidden"], data["out"], data.get("vocab", 0))
    _init_(model, torch.Generator().manual_seed(1000 + seed))  # same weights for LN and no-LN
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist: dict[str, list[float]] = {"train": [], "eval": [], "eval_step": []}
    for step in range(1, steps + 1):
        xb, yb = data["batch"](batch, g)
        logits = model(xb, every_step=lm)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["train"].append(loss.item())
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                xe, ye = data["eval"]
                le = model(xe, every_step=lm)
                hist["eval"].append(
                    float(F.cross_entropy(le.reshape(-1, le.shape[-1]), ye.reshape(-1)))
                )
                hist["eval_step"].append(step)
    return hist


def _image_task(n_train: int, n_test: int, hidden: int) -> dict[str, Any]:
    name, xtr, ytr, xte, yte = image_sequences(n_train, n_test, torch.Generator().manual_seed(0))

    def batch(b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(len(xtr), (b,), generator=g)
        return xtr[i], ytr[i]

    return {"task": "cls", "name": name, "inp": xtr.shape[-1], "hidden": hidden, "out": 10,
            "batch": batch, "eval": (xte, yte)}  # fmt: skip


def _lm_task(n_bytes: int, seq: int, hidden: int) -> dict[str, Any]:
    name, text = stdlib_text(n_bytes)
    split = int(0.9 * len(text))
    tr, te = text[:split], text[split:]
    n_eval = min(64, (len(te) - 1) // (seq + 1))
    ev = te[: n_eval * (seq + 1)].view(n_eval, seq + 1)

    def batch(b: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(len(tr) - seq - 1, (b,), generator=g)
        chunk = torch.stack([tr[j : j + seq + 1] for j in i.tolist()])  # [B, T+1]
        return chunk[:, :-1], chunk[:, 1:]

    return {"task": "lm", "name": name, "inp": 32, "hidden": hidden, "out": 128, "vocab": 128,
            "batch": batch, "eval": (ev[:, :-1], ev[:, 1:])}  # fmt: skip


def steps_to_threshold(
    x: Tensor, y: Tensor, *, layer_norm: bool, seed: int, threshold: float, max_steps: int
) -> int | None:
    """Adam steps (batch 64, lr 3e-3, H=32) until the training loss EMA falls below ``threshold``."""
    data = {"task": "cls", "inp": x.shape[-1], "hidden": 32, "out": 10, "eval": (x[:64], y[:64]),
            "batch": lambda b, g: (lambda i: (x[i], y[i]))(torch.randint(len(x), (b,), generator=g))}  # fmt: skip
    hist = train_rnn("LN-LSTM" if layer_norm else "LSTM", data, seed=seed, steps=max_steps,
                     lr=3e-3, batch=64, eval_every=max_steps)  # fmt: skip
    ema = hist["train"][0]
    for k, v in enumerate(hist["train"], 1):
        ema = 0.9 * ema + 0.1 * v
        if ema < threshold:
            return k
    return None


def _batch_size_claim(seed: int, epochs: int) -> dict[str, float]:
    """Test accuracy [%] of an MLP with LayerNorm or BatchNorm at batch sizes 4 and 128."""
    x, y = digits_sequences()
    x = x.flatten(1)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:400], perm[400:]
    out: dict[str, float] = {}
    for norm in ("LayerNorm", "BatchNorm"):
        for bs in (4, 128):
            g = torch.Generator().manual_seed(seed)
            mk = (lambda d: LayerNorm(d)) if norm == "LayerNorm" else (lambda d: nn.BatchNorm1d(d))
            model = nn.Sequential(nn.Linear(64, 128), mk(128), nn.ReLU(), nn.Linear(128, 128), mk(128),
                                  nn.ReLU(), nn.Linear(128, 10))  # fmt: skip
            for lin in model:
                if isinstance(lin, nn.Linear):  # weights and biases from the private generator
                    bound = lin.in_features**-0.5
                    with torch.no_grad():
                        lin.weight.uniform_(-bound, bound, generator=g)
                        lin.bias.uniform_(-bound, bound, generator=g)
            opt = torch.optim.SGD(model.parameters(), lr=0.05 * math.sqrt(bs / 128), momentum=0.9)
            model.train()
            for _ in range(epochs):
                order = tr[torch.randperm(len(tr), generator=g)]
                for k in range(0, len(order) - bs + 1, bs):
                    idx = order[k : k + bs]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                out[f"{norm}@{bs}"] = 100.0 * float(
                    (model(x[te]).argmax(-1) == y[te]).float().mean()
                )
    return out


def _plot(
    ctx: ExperimentContext, curves: dict[str, dict[str, list[list[float]]]], titles: dict[str, str]
) -> str:
    from batchcraft.utils.plot import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4))
    for ax, (task, by_model) in zip(axes, curves.items(), strict=True):
        for kind, runs in by_model.items():
            n = min(len(r) for r in runs)
            mean = [statistics.fmean(r[i] for r in runs) for i in range(n)]
            k = max(1, n // 60)  # smooth: mean over windows of k steps
            xs = list(range(k, n + 1, k))
            ys = [statistics.fmean(mean[i - k : i]) for i in xs]
            ax.plot(xs, ys, label=kind, linestyle="-" if kind.startswith("LN") else "--")
        ax.set_xlabel("training step (Adam updates)")
        ax.set_ylabel("training loss [nats/prediction]")
        ax.set_title(titles[task])
        ax.legend()
    return ctx.save_figure(fig, "layernorm_training_curves.png")


@register_experiment(
    "layernorm",
    paper="Ba, Kiros, Hinton: Layer Normalization (arXiv 1607.06450)",
    claim="Layer normalisation speeds up the training of recurrent networks (LSTM and GRU) and, "
    "unlike batch normalisation, does not depend on the mini-batch size.",
    quick_minutes=0.8,
    full_setting="Fashion-MNIST 20k/2k rows-as-steps H=128 and stdlib char-LM (2 MB, T=100, H=256), "
    "2000 Adam steps each, MLP LN vs BN 20 epochs; all seeds given",
    order=40,
)
def run(ctx: ExperimentContext) -> ExperimentResult:
    """Run the three comparisons over ``ctx.seeds``; the verdict is decided from the measurements."""
    # These models are tiny: one thread avoids OpenMP spin/oversubscription, which on a shared
    # 2-core machine made each step ~10x slower. The caller's thread count is restored after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class LayerNormExperimentSettings:
    """One setting of the layer-norm reproduction (``quick()`` for ``make run``, ``full()``)."""

    steps: int  # Adam steps per RNN and task
    lr: float
    image_train: int  # pixel-sequence image task: train / test images, hidden size
    image_test: int
    image_hidden: int
    lm_bytes: int  # byte-level LM task: corpus bytes, sequence length, hidden size
    lm_seq: int
    lm_hidden: int
    mlp_epochs: int  # the batch-size claim (MLP, BN vs LN)

    @classmethod
    def quick(cls) -> LayerNormExperimentSettings:
        return cls(steps=200, lr=3e-3, image_train=4000, image_test=1000, image_hidden=48,
                   lm_bytes=300_000, lm_seq=48, lm_hidden=96, mlp_epochs=2)  # fmt: skip

    @classmethod
    def full(cls) -> LayerNormExperimentSettings:
        return cls(steps=2000, lr=3e-3, image_train=20000, image_test=2000, image_hidden=128,
                   lm_bytes=2_000_000, lm_seq=100, lm_hidden=256, mlp_epochs=20)  # fmt: skip


def _run(ctx: ExperimentContext) -> ExperimentResult:
    t0 = time.time()
    q = ctx.quick
    st = LayerNormExperimentSettings.quick() if q else LayerNormExperimentSettings.full()
    cfg: dict[str, dict[str, Any]] = {
        "image": {"steps": st.steps, "batch": 64, "lr": st.lr},
        "lm": {"steps": st.steps, "batch": 32, "lr": st.lr},
    }
    tasks = {
        "image": _image_task(st.image_train, st.image_test, st.image_hidden),
        "lm": _lm_task(st.lm_bytes, st.lm_seq, st.lm_hidden),
    }
    titles = {k: f"{v['name']}" if k == "image" else "byte-level char LM, " + v["name"].split(" (")[0]
              for k, v in tasks.items()}  # fmt: skip
    curves: dict[str, dict[str, list[list[float]]]] = {t: {m: [] for m in MODELS} for t in tasks}
    auc: dict[tuple[str, str], list[float]] = {}
    final: dict[tuple[str, str], list[float]] = {}
    total = len(ctx.seeds) * len(tasks) * len(MODELS)
    with ctx.progress(total, "training LSTM/GRU with and without LN") as bar:
        for seed in ctx.seeds:
            for task, data in tasks.items():
                c = cfg[task]
                for kind in MODELS:
                    hist = train_rnn(kind, data, seed=seed, steps=c["steps"], lr=c["lr"],
                                     batch=c["batch"], eval_every=max(1, c["steps"] // 4))  # fmt: skip
                    curves[task][kind].append(hist["train"])
                    auc.setdefault((task, kind), []).append(statistics.fmean(hist["train"]))
                    final.setdefault((task, kind), []).append(hist["eval"][-1])
                    bar.advance(task=task, model=kind)
    bs = [_batch_size_claim(seed, st.mlp_epochs) for seed in ctx.seeds]

    metrics: list[Metric] = []
    wins: list[str] = []
    rows = ["| task | cell | mean train loss (no LN) | mean train loss (LN) | held-out loss (no LN) | held-out loss (LN) |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for task in tasks:
        for cell in ("LSTM", "GRU"):
            a0, a1 = auc[(task, cell)], auc[(task, "LN-" + cell)]
            f0, f1 = final[(task, cell)], final[(task, "LN-" + cell)]
            unit = "nats/prediction"
            metrics += [
                Metric(f"{task} {cell}: mean training loss", a0, unit=unit),
                Metric(f"{task} LN-{cell}: mean training loss", a1, "lower than no LN", unit),
                Metric(f"{task} LN-{cell}: held-out loss", f1, unit=unit),
                Metric(f"{task} {cell}: held-out loss", f0, unit=unit),
            ]
            if statistics.fmean(a1) < statistics.fmean(a0):
                wins.append(f"{task}/{cell}")
            rows.append(f"| {task} | {cell} | {statistics.fmean(a0):.4f} | {statistics.fmean(a1):.4f} | "
                        f"{statistics.fmean(f0):.4f} | {statistics.fmean(f1):.4f} |")  # fmt: skip
    acc = {k: [b[k] for b in bs] for k in bs[0]}
    for k, v in acc.items():
        metrics.append(Metric(f"MLP {k} test accuracy", v, unit="%"))
    m = {k: statistics.fmean(v) for k, v in acc.items()}
    gap_small, gap_large = (
        m["LayerNorm@4"] - m["BatchNorm@4"],
        m["LayerNorm@128"] - m["BatchNorm@128"],
    )
    batch_holds = gap_small > gap_large
    n_pairs = 2 * len(tasks)
    verdict: Verdict
    if len(wins) == n_pairs and batch_holds:
        verdict = "reproduced"
    elif len(wins) >= n_pairs // 2 or batch_holds:
        verdict = "partly"
    else:
        verdict = "not reproduced"
    summary = (
        f"LN lowered the mean training loss (same steps, lr and initial weights) in {len(wins)} of "
        f"{n_pairs} RNN comparisons ({', '.join(wins) or 'none'}), over {len(ctx.seeds)} seed(s). "
        f"Batch-size claim: LayerNorm minus BatchNorm test accuracy is {gap_small:+.1f} points at batch 4 "
        f"vs {gap_large:+.1f} at batch 128, so BN {'suffers more' if batch_holds else 'does not suffer more'} "
        "from small batches. Verdict from these counts: all RNN comparisons + batch claim = reproduced; "
        "half or more, or the batch claim alone = partly."
    )
    plots = [_plot(ctx, curves, titles)]
    setting = (
        f"{'quick' if q else 'full'}: image task = {tasks['image']['name']}, H={tasks['image']['hidden']}, "
        f"{st.steps} Adam steps (lr {st.lr}, batch 64); LM = {tasks['lm']['name']}, "
        f"H={tasks['lm']['hidden']}, {cfg['lm']['steps']} steps (batch 32); grad clip 1.0; MLP 64-128-128-10 "
        f"SGD momentum 0.9, {st.mlp_epochs} epochs; seeds {ctx.seeds}; wall {time.time() - t0:.0f}s"
    )
    return ExperimentResult(metrics=metrics, verdict=verdict, summary=summary, plots=plots,
                            tables=["\n".join(rows)], setting=setting,
                            data={"batch_size_accuracy": acc, "wins": wins,
                                  "settings": asdict(st)})  # fmt: skip
