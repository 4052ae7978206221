"""RpHGNN pre-computation scaling: time and memory vs K (1..6) and vs graph size.

Correctness gate first (fast == dense reference, fp64), then side by side on one small graph:
dense reference vs chunked fast path. Then the fast path alone on the heterogeneous SBM:
(a) K = 1..6 at a fixed size, (b) sizes of ~10^4..10^6 edges (10^7 without ``--quick`` on request
via ``BATCHCRAFT_RPHGNN_MAX_EDGES``) at fixed K. Reported: wall seconds, seconds per edge and per
iteration, stored bytes, peak RSS growth (Linux ``VmHWM`` after a reset), the projection GFLOP/s
as a fraction of this machine's batched-matmul peak measured in the same run, and the ratio to the
smallest setting, which stays ~1 (per unit of K or of edges) when growth is linear.

Run: ``batchcraft bench rphgnn-scaling`` (or ``python -m batchcraft.benchmarks.bench_rphgnn [--quick]``).

``batchcraft bench rphgnn-methods`` (``python -m batchcraft.benchmarks.bench_rphgnn --methods [--quick]``):
RpHGNN vs SeHGNN with its transformer-style semantic fusion (and the plain relation-wise
baseline) on ACM when the data folder has it (else the heterogeneous SBM), with the dataset's
preset (SeHGNN on ACM with metapaths of up to 4 hops, as in its published runs, and also with 2).
Gate first (fusion == its loop reference, fp64). Then, interleaved over repeats (A B C A B C ...),
each method's pre-computation wall time and its training time per epoch (a fixed number of epochs
with validation every epoch, as in training); median, min and max.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from typing import Any

import torch

from batchcraft.data.hetero_sbm import hetero_sbm
from batchcraft.graph.hetero import canonicalize_relations
from batchcraft.graph.rphgnn import naive_rphgnn_precompute, rphgnn_precompute
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import (
    PeakRSS,
    matmul_peak_gflops,
    print_table,
    rss_bytes,
    timeit,
    write_result,
)

EMB = 64


def _projection_flops(data: Any, K: int) -> float:
    """FLOPs of the squashing matmuls: Σ_{k<K-1} Σ_t Σ_{h∈H_t} 2·N_t·dim(h)·d_t (all widths e here)."""
    g = data.graph
    _, raw = canonicalize_relations(g.edge_index_dict, g.num_nodes_dict)
    terms = 0.0
    for t, n in g.num_nodes_dict.items():
        incident = sum(1 for f, _ in raw.values() if t in (f[0], f[2]))
        terms += 2 * incident * n
    return 2.0 * terms * EMB * EMB * max(K - 1, 0)


def _graph(num_papers: int) -> Any:
    return hetero_sbm(
        num_papers=num_papers, num_authors=max(num_papers // 2, 4), feature_dim=EMB,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def _run(data: Any, K: int, chunk_rows: int | None = 65536) -> dict[str, Any]:
    g = data.graph
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        out = rphgnn_precompute(
            g.x_dict, g.edge_index_dict, g.num_nodes_dict, data.target, num_iterations=K,
            embedding_size=EMB, generator=torch.Generator().manual_seed(1), chunk_rows=chunk_rows,
        )  # fmt: skip
    dt = time.perf_counter() - t0
    stored = sum(t.numel() * t.element_size() for t in out.values())
    mem = rss.peak / 2**20 if rss_bytes() else float("nan")  # nan where RSS cannot be read
    return {"seconds": dt, "stored_MiB": stored / 2**20, "peak_rss_growth_MiB": mem}


@register_benchmark(
    "rphgnn-scaling",
    description="RpHGNN precompute: time/memory vs K (1..6) and vs edges; linear growth",
)
def main(quick: bool = False) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    # 1. correctness gate: fast == dense reference (fp64)
    small = _graph(300)
    g = small.graph
    kw = dict(num_iterations=3, embedding_size=16, storage_dtype=torch.float64)
    fast = rphgnn_precompute(
        g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper", compute_dtype=torch.float64,
        chunk_rows=64, generator=torch.Generator().manual_seed(0), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    ref = naive_rphgnn_precompute(
        g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper",
        generator=torch.Generator().manual_seed(0), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    err = max(float((fast[k] - ref[k]).abs().max()) for k in ref)
    if err > 1e-10:
        raise AssertionError(f"fast precompute differs from the dense reference by {err}")
    print(f"correctness gate: max |fast - reference| = {err:.2e} (fp64)")
    peak = matmul_peak_gflops(size=256 if quick else 512)
    rows: list[dict[str, Any]] = []
    # 2. reference vs fast, side by side
    mid = _graph(1000 if quick else 2000)
    gm = mid.graph
    args = (gm.x_dict, gm.edge_index_dict, gm.num_nodes_dict, "paper")
    t_ref = timeit(
        lambda: naive_rphgnn_precompute(
            *args, num_iterations=3, embedding_size=EMB, compute_dtype=torch.float32,
            generator=torch.Generator().manual_seed(0),
        ), warmup=0, repeat=1,
    )  # fmt: skip
    t_fast = timeit(
        lambda: rphgnn_precompute(
            *args, num_iterations=3, embedding_size=EMB, generator=torch.Generator().manual_seed(0)
        ), warmup=0, repeat=2,
    )  # fmt: skip
    rows.append({
        "sweep": "ref-vs-fast", "setting": f"{gm.num_edges()} edges, K=3",
        "seconds": t_fast.median, "ratio": t_ref.median / t_fast.median,
        "note": f"dense reference {t_ref.median:.3g}s = ratio x fast",
    })  # fmt: skip
    # 3. K sweep
    base_papers = 5_000 if quick else 20_000
    data = _graph(base_papers)
    edges = data.graph.num_edges()
    base = None
    for K in range(1, 7):
        r = _run(data, K)
        per_k = r["seconds"] / K
        base = base or per_k
        flops = _projection_flops(data, K)
        rows.append({
            "sweep": "K", "setting": f"K={K}, {edges} edges", **r,
            "ratio": per_k / base, "proj_frac_of_peak": flops / r["seconds"] / 1e9 / peak,
            "note": "ratio = (s per K) / (s per K at K=1); K=1 has no squash step",
        })  # fmt: skip
    # 4. size sweep at K = 3
    max_edges = int(os.environ.get("BATCHCRAFT_RPHGNN_MAX_EDGES", 10**5 if quick else 10**6))
    sizes = [p for p in (2_000, 20_000, 200_000, 2_000_000) if p * 5 <= max_edges * 1.01]
    base = None
    for p in sizes:
        d = _graph(p)
        e = d.graph.num_edges()
        r = _run(d, 3)
        per_e = r["seconds"] / e
        base = base or per_e
        rows.append({
            "sweep": "edges", "setting": f"{e} edges, K=3", **r, "ratio": per_e / base,
            "proj_frac_of_peak": _projection_flops(d, 3) / r["seconds"] / 1e9 / peak,
            "note": "ratio = (s per edge) / (s per edge at the smallest graph)",
        })  # fmt: skip
    cols = ["sweep", "setting", "seconds", "ratio", "stored_MiB", "peak_rss_growth_MiB",
            "proj_frac_of_peak", "note"]  # fmt: skip
    print_table(rows, cols, title=f"rphgnn-scaling (matmul peak {peak:.1f} GFLOP/s)")
    result = {"rows": rows, "matmul_peak_gflops": peak, "gate_max_abs_err": err, "quick": quick}
    write_result("rphgnn-scaling", result)
    return result


def _methods_data(quick: bool) -> tuple[Any, Any]:
    from batchcraft.data.paths import find_data_dir
    from batchcraft.recipes.rphgnn import PRESETS, load_dataset

    folder = find_data_dir()
    if folder is not None and (folder / "ACM.zip").exists():
        data = load_dataset("ACM", data_dir=folder)
        cfg = PRESETS["ACM"]
        if quick:
            cfg = dataclasses.replace(cfg, num_iterations=3)
        return data, cfg
    data = hetero_sbm(generator=torch.Generator().manual_seed(0))
    return data, PRESETS["hetero-sbm"]


def _epoch_seconds(data: Any, method: str, cfg: Any, groups: Any, epochs: int, seed: int) -> float:
    from batchcraft.data.hgb import hgb_split
    from batchcraft.recipes.rphgnn import RpHGNNTrainSettings, build_model, train_node_classifier

    tr, va = hgb_split(data.train_idx, data.y, generator=torch.Generator().manual_seed(seed))
    shapes = {j: (int(t.shape[1]), int(t.shape[2])) for j, t in groups.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, shapes, data.num_classes, cfg)
        tc = RpHGNNTrainSettings(
            lr=cfg.lr, epochs=epochs, patience=epochs, batch_size=cfg.batch_size, val_every=1,
            stop_on=cfg.stop_on,
        )  # fmt: skip
        with torch.enable_grad():
            t0 = time.perf_counter()
            train_node_classifier(
                model, groups, data.y, tr, va, data.test_idx, config=tc,
                generator=torch.Generator().manual_seed(seed), multilabel=data.multilabel,
            )  # fmt: skip
            return (time.perf_counter() - t0) / epochs


@register_benchmark(
    "rphgnn-methods",
    description="RpHGNN vs SeHGNN (semantic fusion) vs relation-wise: pre-compute and epoch time",
)
def methods(quick: bool = False) -> dict[str, Any]:
    from batchcraft.graph.sehgnn import SemanticFusion, naive_semantic_fusion
    from batchcraft.recipes.rphgnn import precompute_groups

    torch.set_grad_enabled(False)
    # 1. gate: the fusion equals its loop reference (fp64)
    fusion = SemanticFusion(8, qk_dim=4).double()
    with torch.no_grad():
        fusion.beta.fill_(0.5)
    h = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    err = float((fusion(h) - naive_semantic_fusion(fusion, h)).abs().max())
    if err > 1e-10:
        raise AssertionError(f"semantic fusion differs from its loop reference by {err}")
    print(f"correctness gate: max |fusion - loop reference| = {err:.2e} (fp64)")
    data, cfg = _methods_data(quick)
    repeats, epochs = (3, 3) if quick else (5, 5)
    # name -> (method, config); the baselines' metapath length is cfg.baseline_hops
    variants = {
        "rphgnn": ("rphgnn", cfg),
        f"sehgnn ({cfg.baseline_hops} hops)": ("sehgnn", cfg),
        f"relation_wise ({cfg.baseline_hops} hops)": ("relation_wise", cfg),
    }
    if cfg.baseline_hops != 2:
        variants["sehgnn (2 hops)"] = ("sehgnn", dataclasses.replace(cfg, baseline_hops=2))
    names = list(variants)
    pre: dict[str, list[float]] = {m: [] for m in names}
    ep: dict[str, list[float]] = {m: [] for m in names}
    info: dict[str, dict[str, Any]] = {}
    for r in range(repeats):  # interleaved: A B C A B C ...
        for m in names:
            method, vcfg = variants[m]
            t0 = time.perf_counter()
            groups = precompute_groups(
                data, method, vcfg, generator=torch.Generator().manual_seed(r)
            )
            pre[m].append(time.perf_counter() - t0)
            ep[m].append(_epoch_seconds(data, method, vcfg, groups, epochs, seed=r))
            info[m] = {
                "groups": len(groups),
                "stored_MiB": sum(t.numel() * t.element_size() for t in groups.values()) / 2**20,
            }
            del groups
            print(f"repeat {r + 1}/{repeats} {m}: precompute {pre[m][-1]:.2f}s, "
                  f"epoch {ep[m][-1]:.3f}s")  # fmt: skip
    rows = []
    for m in names:
        rows.append({
            "method": m, "groups": info[m]["groups"], "stored_MiB": info[m]["stored_MiB"],
            "precompute_median_s": statistics.median(pre[m]), "precompute_min_s": min(pre[m]),
            "precompute_max_s": max(pre[m]), "epoch_median_s": statistics.median(ep[m]),
            "epoch_min_s": min(ep[m]), "epoch_max_s": max(ep[m]),
            "epoch_ratio_vs_rphgnn": statistics.median(ep[m]) / statistics.median(ep["rphgnn"]),
        })  # fmt: skip
    print_table(
        rows, title=f"rphgnn-methods on {data.name} (K={cfg.num_iterations}; "
        f"{repeats} interleaved repeats x {epochs} epochs)",
    )  # fmt: skip
    result = {
        "dataset": data.name, "config": dataclasses.asdict(cfg), "repeats": repeats,
        "epochs_per_repeat": epochs, "rows": rows, "precompute_s": pre, "epoch_s": ep,
        "gate_max_abs_err": err, "quick": quick,
    }  # fmt: skip
    write_result("rphgnn-methods", result)
    return result


if __name__ == "__main__":
    if "--methods" in sys.argv:
        methods(quick="--quick" in sys.argv)
    else:
        main(quick="--quick" in sys.argv)
