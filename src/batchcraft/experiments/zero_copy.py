"""Reproduction of PyTorch-Direct's claim: GPU zero-copy feature gathering speeds up GNN training.

Trains GraphSAGE on a seeded synthetic power-law graph and times one epoch (a fixed set of
mini-batches) per feature path, split into sample / gather / transfer / compute / wait. On a
CPU-only machine the headline claim (GPUs reading pinned host memory over PCIe, 65-92 % faster
than CPU gathering) cannot be tested: there is no GPU and no PCIe link. What is measured instead:

* the conventional path's data cost: the gather's share of a sequential epoch (the paper's
  motivation), on ``cpu`` (index_select) and ``staged`` (staging ring + copy) feature paths;
* overlap, the paper's second technique: the pipelined loader (gather of batch t+1 while batch
  t trains) vs the sequential one, same batches;
* exactness: per-batch training losses identical across all feature paths;
* the 128-byte alignment model of our kernel vs flat / circular layouts (analytic).

With CUDA the GPU paths (``naive`` CPU gather + copy, ``staged``, ``uva-triton``) are timed too
and decide the verdict.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric
from batchcraft.registry import register_experiment

STAGES = ("sample", "gather", "transfer", "compute", "wait")


def _run_path(
    data: Any,
    graph: Any,
    *,
    backend: str,
    prefetch: int,
    device: torch.device,
    seed: int,
    fanouts: list[int],
    batch_size: int,
    hidden: int,
    num_batches: int,
) -> dict[str, Any]:
    from batchcraft.graph import GraphSAGE, NeighborLoader, PinnedFeatureStore
    from batchcraft.recipes.sage import train_epoch
    from batchcraft.recipes.seeding import seeded

    if backend == "naive":  # conventional: plain host tensor, CPU gather, then copy to device
        feats: Any = data.x
    else:
        feats = PinnedFeatureStore(data.x, backend=backend, device=device)
    loader = NeighborLoader(
        graph,
        feats,
        data.y,
        fanouts,
        batch_size=batch_size,
        input_nodes=data.train_idx[: batch_size * num_batches],
        generator=torch.Generator().manual_seed(seed),
        device=device,
        prefetch=prefetch,
    )
    with seeded(seed):  # same init + dropout on every path (the caller's RNG restored after)
        model = GraphSAGE(data.x.shape[1], hidden, data.num_classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        t0 = time.perf_counter()
        stats = train_epoch(model, loader, opt)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    if isinstance(feats, PinnedFeatureStore):
        feats.close()
    return {"seconds": seconds, "stages": stats.stages, "losses": stats.losses}


@dataclass(frozen=True)
class ZeroCopyExperimentSettings:
    """One setting of the zero-copy reproduction (``quick()`` for ``make run``, ``full()``)."""

    nodes: int  # power-law graph
    degree: float  # mean degree
    features: int  # F (fp32)
    fanouts: tuple[int, ...]
    batch: int
    hidden: int
    batches: int  # mini-batches timed per feature path

    @classmethod
    def quick(cls) -> ZeroCopyExperimentSettings:
        return cls(nodes=150_000, degree=12.0, features=128, fanouts=(10, 5), batch=512,
                   hidden=64, batches=20)  # fmt: skip

    @classmethod
    def full(cls) -> ZeroCopyExperimentSettings:
        return cls(nodes=1_000_000, degree=15.0, features=128, fanouts=(25, 10), batch=1024,
                   hidden=256, batches=40)  # fmt: skip


@register_experiment(
    "zero-copy",
    paper="Large Graph Convolutional Network Training with GPU-Oriented Data Communication "
    "Architecture (PyTorch-Direct, PVLDB 2021, arXiv 2103.03330)",
    claim="GPU threads gathering node features directly from pinned host memory (128-B aligned, "
    "overlapped with training) make GNN training 65-92% faster than CPU gathering + copy.",
    quick_minutes=0.2,
    full_setting="power-law graph 1M nodes, mean degree 15, F=128 fp32 (0.5 GB), fan-outs 25,10, "
    "batch 1024, hidden 256, 40 batches per path",
    order=70,
)
def run(ctx: ExperimentContext) -> ExperimentResult:
    from batchcraft.data.graphs import powerlaw_graph
    from batchcraft.graph import csr_from_edge_index
    from batchcraft.ops.gather import request_efficiency
    from batchcraft.utils.bench import copy_bandwidth_gbs, format_table
    from batchcraft.utils.plot import pyplot

    cfg = ZeroCopyExperimentSettings.quick() if ctx.quick else ZeroCopyExperimentSettings.full()
    n, deg, f, bs, hidden, nb = (
        cfg.nodes,
        cfg.degree,
        cfg.features,
        cfg.batch,
        cfg.hidden,
        cfg.batches,
    )
    fan = list(cfg.fanouts)
    cuda = ctx.device.type == "cuda" and torch.cuda.is_available()
    ctx.log(f"building power-law graph: {n:,} nodes, mean degree {deg}, F={f}")
    data = powerlaw_graph(n, deg, num_features=f, seed=0)
    graph = csr_from_edge_index(data.edge_index, n)
    cpu = torch.device("cpu")
    paths: list[tuple[str, str, int, torch.device]] = [
        ("cpu, sequential", "cpu", 0, cpu),
        ("staged, sequential", "staged", 0, cpu),
        ("cpu, pipelined", "cpu", 1, cpu),
    ]
    if cuda:
        dev = ctx.device
        paths += [
            ("GPU: CPU gather + copy", "naive", 1, dev),
            ("GPU: staged", "staged", 1, dev),
            ("GPU: uva-triton (zero-copy)", "uva-triton", 1, dev),
        ]
    common: dict[str, Any] = dict(fanouts=fan, batch_size=bs, hidden=hidden, num_batches=nb)
    # warm-up (first-call costs of kernels and allocator), not timed
    _run_path(
        data, graph, backend="cpu", prefetch=0, device=cpu, seed=0, **common | {"num_batches": 2}
    )
    # interleave paths over rounds and keep each path's fastest round: on a shared machine the
    # load drifts, and the minimum is the least disturbed figure (all paths do identical work).
    # One intra-op thread for the trainer: it plays the accelerator, and the loader thread plays
    # the host CPU that samples and gathers (sequential = the trainer waits for it). This also
    # keeps OpenMP barrier stalls of an oversubscribed machine out of the comparison.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rounds = 3
        best: dict[tuple[str, int], dict[str, Any]] = {}
        with ctx.progress(rounds * len(paths) * len(ctx.seeds), "feature paths") as bar:
            for _ in range(rounds):
                for seed in ctx.seeds:
                    for name, backend, prefetch, dev in paths:
                        r = _run_path(
                            data,
                            graph,
                            backend=backend,
                            prefetch=prefetch,
                            device=dev,
                            seed=seed,
                            **common,
                        )
                        key = (name, seed)
                        if key not in best or r["seconds"] < best[key]["seconds"]:
                            best[key] = r
                        bar.advance(path=name, s=r["seconds"])
    finally:
        torch.set_num_threads(threads)
    results = {p[0]: [best[(p[0], seed)] for seed in ctx.seeds] for p in paths}
    copy_gbs = copy_bandwidth_gbs()

    def mean_t(name: str) -> list[float]:
        return [r["seconds"] for r in results[name]]

    seq = mean_t("cpu, sequential")
    pip = mean_t("cpu, pipelined")
    gather_share = [r["stages"]["gather"] / r["seconds"] for r in results["cpu, sequential"]]
    overlap_speedup = [a / b for a, b in zip(seq, pip, strict=True)]
    hidden_pct = [  # share of the trainer's wait for data that the pipeline removed
        100 * (1 - p["stages"]["wait"] / max(q["stages"]["wait"], 1e-9))
        for q, p in zip(results["cpu, sequential"], results["cpu, pipelined"], strict=True)
    ]
    ref_losses = [r["losses"] for r in results["cpu, sequential"]]
    max_dloss = max(
        abs(a - b)
        for name in results
        for r, ref in zip(results[name], ref_losses, strict=True)
        for a, b in zip(r["losses"], ref, strict=True)
    )
    eff = {
        lay: [request_efficiency(ff, 4, lay, num_rows=2000) for ff in (100, 128, 602)]
        for lay in ("flat", "circular", "row", "row_aligned")
    }
    align_gain_602 = eff["row_aligned"][2] / eff["flat"][2]
    metrics = [
        Metric("epoch time, cpu sequential", seq, unit="s"),
        Metric("epoch time, staged sequential", mean_t("staged, sequential"), unit="s"),
        Metric("epoch time, cpu pipelined", pip, unit="s"),
        Metric("gather share of sequential epoch", [100 * g for g in gather_share], unit="%"),
        Metric("pipelined speed-up over sequential", overlap_speedup, unit="x"),
        Metric(
            "trainer wait for data hidden by the pipeline",
            hidden_pct,
            paper="target: overlap hides >= 70% of gather time (GPU)",
            unit="%",
        ),
        Metric("max |loss difference| across feature paths", [max_dloss]),
        Metric(
            "128-B request efficiency gain at F=602 (row-aligned / flat, model)",
            [align_gain_602],
            paper="circular shift: 0.89 vs 0.50 (same model)",
            unit="x",
        ),
    ]
    gpu_speedup: list[float] = []
    if cuda:
        gpu_speedup = [
            a / b
            for a, b in zip(
                mean_t("GPU: CPU gather + copy"), mean_t("GPU: uva-triton (zero-copy)"), strict=True
            )
        ]
        metrics.append(
            Metric(
                "GPU epoch speed-up, zero-copy vs CPU gather + copy",
                gpu_speedup,
                paper="1.65-1.92x (65-92% faster, multi-GPU)",
                unit="x",
            )
        )
    exact = max_dloss == 0.0
    overlap_ok = sum(overlap_speedup) / len(overlap_speedup) > 1.05
    model_ok = align_gain_602 >= 1.7
    if cuda:
        g = sum(gpu_speedup) / len(gpu_speedup)
        verdict = (
            "reproduced" if g >= 1.3 and exact else ("partly" if g > 1.0 else "not reproduced")
        )
        headline = f"On this GPU, zero-copy made the epoch {g:.2f}x faster than CPU gather + copy."
    else:
        verdict = "partly" if (exact and model_ok and overlap_ok) else "not reproduced"
        headline = (
            "No GPU here, so the headline claim (GPU threads reading pinned host memory over PCIe, "
            "65-92% faster) was NOT tested; the verdict rests only on what a CPU can show."
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gs = 100 * sum(gather_share) / len(gather_share)
    ov = sum(overlap_speedup) / len(overlap_speedup)
    summary = (
        f"{headline} Measured on CPU: the feature gather takes {gs:.1f}% of a sequential epoch "
        f"(F={f} fp32, copy bandwidth {copy_gbs:.1f} GB/s); pipelining gather with compute "
        f"gives {ov:.2f}x ({'a real' if overlap_ok else 'no meaningful'} overlap gain on "
        "1 trainer thread + 1 loader thread vs the trainer alone; the pipeline removes "
        f"{sum(hidden_pct) / len(hidden_pct):.0f}% of the trainer's wait for data, but the two threads "
        "also slow each other down when they share cores); per-batch losses are "
        f"{'identical' if exact else 'NOT identical'} across "
        f"feature paths (max difference {max_dloss:.2g}). The alignment model predicts "
        f"{align_gain_602:.2f}x fewer wasted 128-B reads than flat indexing at F=602 "
        f"({eff['row_aligned'][2]:.2f} vs {eff['flat'][2]:.2f}); this is arithmetic about "
        "addresses, not a PCIe measurement. Overlap can only pay when a core is free for the "
        f"loader thread: the 1-minute load average at the end of the run was {load:.1f} on "
        f"{os.cpu_count()} cores."
    )
    rows = []
    for name in results:
        st = {k: sum(r["stages"][k] for r in results[name]) / len(results[name]) for k in STAGES}
        rows.append(
            {
                "path": name,
                "epoch s": sum(mean_t(name)) / len(mean_t(name)),
                **{f"{k} s": v for k, v in st.items()},
            }
        )
    eff_rows = [
        {"F": ff, **{lay: round(eff[lay][i], 3) for lay in eff}}
        for i, ff in enumerate((100, 128, 602))
    ]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    left = [0.0] * len(rows)
    for k in STAGES:
        vals = [r[f"{k} s"] for r in rows]
        ax.barh([r["path"] for r in rows], vals, left=left, label=k)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.scatter([r["epoch s"] for r in rows], [r["path"] for r in rows], color="k", marker="|",
               s=300, label="epoch wall time", zorder=3)  # fmt: skip
    ax.set_xlabel("time per epoch [s] (stage sums; pipelined stages overlap)")
    ax.set_ylabel("feature path")
    ax.set_title(f"GraphSAGE epoch on a power-law graph ({n:,} nodes, {nb} batches)")
    ax.legend(fontsize=7, loc="lower right")
    p1 = ctx.save_figure(fig, "epoch_stages.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.2
    for j, lay in enumerate(eff):
        ax.bar([i + j * width for i in range(3)], eff[lay], width, label=lay)
    ax.set_xticks([i + 1.5 * width for i in range(3)], [f"F={ff} (fp32)" for ff in (100, 128, 602)])
    ax.set_ylabel("useful bytes / requested bytes [fraction]")
    ax.set_xlabel("feature width")
    ax.set_title("128-B read-request efficiency per warp layout (model)")
    ax.legend(fontsize=7)
    p2 = ctx.save_figure(fig, "request_efficiency.png")
    setting = (
        f"power-law graph (Chung-Lu, exponent 2.5) {n:,} nodes, mean degree {deg}, F={f} fp32; "
        f"GraphSAGE 2 layers hidden {hidden}, fan-outs {fan}, batch {bs}, {nb} batches per path, "
        f"seeds {ctx.seeds}, best of {rounds} interleaved rounds per path, "
        f"trainer on 1 intra-op thread, loader on 1 background thread, device {ctx.device}"
    )
    return ExperimentResult(
        metrics=metrics,
        verdict=verdict,  # type: ignore[arg-type]
        summary=summary,
        plots=[p1, p2],
        tables=[format_table(rows), format_table(eff_rows)],
        setting=setting,
        data={"paths": rows, "efficiency": eff_rows, "copy_gbs": copy_gbs, "settings": asdict(cfg)},
    )
