"""Reproduce RpHGNN's HGB node-classification claim (DBLP 95.55, ACM 94.04 Micro-F1).

ACM and DBLP from the data folder when present (else the seeded heterogeneous SBM): RpHGNN vs
an MLP on the target's own features and two relation-wise baselines on the same metapath tables:
per-path projection + concatenation (``relation_wise``) and SeHGNN's transformer-style semantic
fusion (``sehgnn``); metapaths of up to 2 hops in the quick setting, SeHGNN's own lengths (ACM 4,
DBLP 2) in the full one. Micro/Macro-F1 at the best validation epoch on the
test file the loader picks (``test_labels="auto"``: the shared archives' ``label.dat.test_full``
disagrees with ``label.dat.test`` at chance level, so ``label.dat.test`` is used), with
pre-computation, epoch and total times. The verdict compares the measured Micro-F1 with the
targets (within 1.5 points of the paper: ACM >= 92.5, DBLP >= 94.0) and RpHGNN's total time with
SeHGNN's (the paper's most effective baseline).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric
from batchcraft.registry import register_experiment

PAPER_MICRO = {"ACM": 94.04, "DBLP": 95.55}
TARGET_MICRO = {"ACM": 92.5, "DBLP": 94.0}


def _configs(quick: bool) -> dict[str, Any]:
    from batchcraft.recipes.rphgnn import PRESETS

    if not quick:
        return dict(PRESETS)
    return {  # laptop setting: fewer epochs, 2-hop baselines; DBLP squashes random (not 4231-d) features
        "ACM": dataclasses.replace(
            PRESETS["ACM"], num_iterations=3, epochs=150, patience=30, baseline_hops=2
        ),
        "DBLP": dataclasses.replace(
            PRESETS["DBLP"], use_all_features=False, embedding_size=256, hidden=256,
            epochs=150, patience=30,
        ),
        "hetero-sbm": dataclasses.replace(PRESETS["hetero-sbm"], epochs=100, patience=20),
    }  # fmt: skip


@register_experiment(
    "rphgnn",
    paper="Efficient Heterogeneous Graph Learning via Random Projection (RpHGNN, arXiv 2310.14481)",
    claim="RpHGNN reaches state-of-the-art Micro-F1 on HGB (DBLP 95.55, ACM 94.04) with cheap "
    "pre-computation whose cost grows linearly in depth",
    quick_minutes=0.5,
    full_setting="the official hyper-parameters (ACM K=6 with 1902-d features everywhere, DBLP K=5 "
    "with all features, e=1024), up to 500 epochs, every seed given",
    order=80,
)
def run(ctx: ExperimentContext) -> ExperimentResult:
    from batchcraft.recipes.rphgnn import fit_node_classifier, load_dataset

    cfgs = _configs(ctx.quick)
    names = []
    if ctx.data_dir is not None:
        names = [n for n in ("ACM", "DBLP") if (ctx.data_dir / f"{n}.zip").exists()]
    if not names:
        names = ["sbm"]
    methods = ["rphgnn", "relation_wise", "sehgnn", "mlp"]
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    agreement: dict[str, float | None] = {}
    with ctx.progress(
        len(names) * len(methods) * len(ctx.seeds), "datasets x methods x seeds"
    ) as bar:
        for spec in names:
            data = load_dataset(spec, data_dir=ctx.data_dir, test_labels="auto")
            agreement[data.name] = data.label_agreement
            ctx.log(f"{data.name}: {data.graph.num_nodes_dict}, evaluating on {data.test_file}")
            if data.test_file_reason:
                ctx.log(data.test_file_reason)
            cfg = cfgs.get(data.name, cfgs["hetero-sbm"])
            records[data.name] = {}
            for m in methods:
                for seed in ctx.seeds:
                    rec = fit_node_classifier(
                        data, method=m, config=cfg, seed=seed, device=ctx.device
                    )
                    records[data.name].setdefault(m, []).append(rec)
                    ctx.log(
                        f"{data.name} {m} seed {seed}: micro {rec['test_micro']:.4f} "
                        f"macro {rec['test_macro']:.4f} total {rec['total_s']:.1f}s"
                    )
                    bar.advance()
    metrics: list[Metric] = []
    rows = ["| dataset | method | micro-F1 [%] | macro-F1 [%] | precompute [s] | epoch [s] | "
            "to best val [s] | total [s] | groups | stored [MiB] |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for ds, by_m in records.items():
        for m, recs in by_m.items():
            mi = [100 * r["test_micro"] for r in recs]
            ma = [100 * r["test_macro"] for r in recs]
            paper = f"{PAPER_MICRO[ds]}" if (m == "rphgnn" and ds in PAPER_MICRO) else ""
            metrics.append(Metric(f"{ds} {m} test micro-F1", mi, paper, "%"))
            metrics.append(Metric(f"{ds} {m} test macro-F1", ma, "", "%"))
            metrics.append(Metric(f"{ds} {m} total time", [r["total_s"] for r in recs], "", "s"))

            def avg(key: str, recs: list[dict[str, Any]] = recs) -> float:
                return statistics.fmean(float(r[key]) for r in recs)

            rows.append(
                f"| {ds} | {m} | {statistics.fmean(mi):.2f} | {statistics.fmean(ma):.2f} | "
                f"{avg('precompute_s'):.1f} | {avg('epoch_time_s'):.3f} | {avg('time_to_best_s'):.1f} | "
                f"{avg('total_s'):.1f} | {recs[0]['num_groups']} | {avg('stored_bytes') / 2**20:.1f} |"
            )
    verdict, summary = _verdict(records)
    plot = _plot(ctx, records)
    test_file = next(iter(next(iter(records.values())).values()))[0]["test_file"]
    agree = ", ".join(f"{k} {100 * v:.1f}%" for k, v in agreement.items() if v is not None)
    if agree:
        summary += (
            f" Evaluated on {test_file} (picked by the loader): in the shared archives "
            f"label.dat.test_full agrees with label.dat.test on only {agree} of the public test "
            "nodes (chance level; e.g. DBLP lists J. D. Ullman as AI there), while a 2-hop label "
            "vote from label.dat agrees with label.dat.test, so test_full is not a usable ground "
            "truth here."
        )
    setting = (
        f"{'quick' if ctx.quick else 'full'} setting; datasets {list(records)}; seeds {ctx.seeds}; "
        f"test labels from {test_file}; configs: "
        + "; ".join(
            f"{ds}: {dataclasses.asdict(cfgs.get(ds, cfgs['hetero-sbm']))}" for ds in records
        )
    )
    return ExperimentResult(
        metrics=metrics, verdict=verdict, summary=summary, plots=[plot], tables=["\n".join(rows)],
        setting=setting, data={"records": records},
    )  # fmt: skip


def _mean(recs: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in recs)


def _speed_baseline(by_m: dict[str, list[dict[str, Any]]]) -> str:
    """The relation-wise baseline the speed claim is measured against: SeHGNN with its semantic
    fusion when it ran (the paper's most effective baseline), else the plain relation-wise one."""
    return "sehgnn" if "sehgnn" in by_m else "relation_wise"


def _verdict(records: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[Any, str]:
    parts, hits, close, fast = [], 0, 0, 0
    for ds, by_m in records.items():
        rp = 100 * _mean(by_m["rphgnn"], "test_micro")
        mlp = 100 * _mean(by_m["mlp"], "test_micro")
        base = _speed_baseline(by_m)
        rw = 100 * _mean(by_m[base], "test_micro")
        speed = _mean(by_m[base], "total_s") / max(_mean(by_m["rphgnn"], "total_s"), 1e-9)
        fast += speed >= 2.0 and rp >= rw - 0.5  # the paper's speed claim, at equal F1
        others = ", ".join(
            f"{m} {100 * _mean(r, 'test_micro'):.2f}" for m, r in by_m.items() if m != "rphgnn"
        )
        if ds in TARGET_MICRO:
            ok = rp >= TARGET_MICRO[ds]
            near = rp >= TARGET_MICRO[ds] - 3.0
            parts.append(
                f"{ds}: RpHGNN micro-F1 {rp:.2f} (paper {PAPER_MICRO[ds]}, target >= "
                f"{TARGET_MICRO[ds]}: {'met' if ok else 'missed'}); {others}; "
                f"{base} total time / RpHGNN total time = {speed:.2f}"
            )
        else:  # synthetic: the learnability claim (structure-only labels)
            ok = rp >= 90.0 and mlp <= 35.0
            near = rp >= 80.0 and rp > mlp + 20
            parts.append(
                f"{ds} (synthetic, labels only in 2-hop structure): RpHGNN {rp:.2f}, {others} "
                "(needs >= 90 vs MLP <= 35)"
            )
        hits += ok
        close += near
    n = len(records)
    if hits == n and fast == n:
        verdict = "reproduced"
    elif hits > 0 or close == n:
        verdict = "partly"
    else:
        verdict = "not reproduced"
    speed_note = (
        " Speed target (>= 2x faster in total time than SeHGNN-style relation-wise learning with "
        "semantic fusion, at equal or better F1) "
        + ("met." if fast == n else f"met on {fast} of {n} dataset(s).")
    )
    return verdict, "; ".join(parts) + "." + speed_note


def _plot(ctx: ExperimentContext, records: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    from batchcraft.utils.plot import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    dss = list(records)
    methods = list(next(iter(records.values())))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + i * w for j in range(len(dss))]
        ax1.bar(xs, [100 * _mean(records[d][m], "test_micro") for d in dss], w, label=m)
        ax2.bar(xs, [_mean(records[d][m], "total_s") for d in dss], w, label=m)
    for j, d in enumerate(dss):
        if d in PAPER_MICRO:
            ax1.hlines(PAPER_MICRO[d], j - 0.1, j + 0.9, colors="k", linestyles="--")
    for ax in (ax1, ax2):
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(dss))], dss)
        ax.set_xlabel("dataset")
    low = min(100 * _mean(records[d][m], "test_micro") for d in dss for m in methods)
    ax1.set_ylim(max(0.0, low - 5.0), 100.0)
    ax1.set_ylabel("test micro-F1 [%] (dashed: paper)")
    ax1.set_title("RpHGNN vs baselines: accuracy")
    ax2.set_ylabel("pre-compute + training time [s]")
    ax2.set_title("RpHGNN vs baselines: total time")
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), bbox_to_anchor=(0.5, -0.12))
    return ctx.save_figure(fig, "rphgnn_f1_time.png")
