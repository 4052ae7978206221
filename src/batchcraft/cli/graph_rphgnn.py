"""``batchcraft graph rphgnn``: pre-compute and train RpHGNN (or a baseline) on HGB data or the SBM.

Thin: resolves the dataset, applies the preset of the spec (§3.7) with any overrides, and runs
:func:`batchcraft.graph.rphgnn_pipeline.fit_node_classifier` per seed. Every finished seed is
appended to ``--out`` atomically, so an interrupted run resumes where it stopped; ``--cache``
keeps the pre-computed groups on disk and reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``rphgnn`` command to the ``graph`` group."""

    @app.command("rphgnn")
    def rphgnn(
        dataset: Annotated[
            str,
            typer.Option(
                help="sbm | ACM | DBLP | IMDB (from the data folder) | an HGB folder/zip."
            ),
        ] = "sbm",
        method: Annotated[
            str, typer.Option(help="rphgnn | relation_wise | nars | mlp.")
        ] = "rphgnn",
        iterations: Annotated[
            int | None, typer.Option("--iterations", "-K", help="K (default: the preset).")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option(help="Max epochs (default: the preset).")
        ] = None,
        seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..n-1 (mean ± std).")] = 1,
        test_labels: Annotated[
            str, typer.Option(help="full (label.dat.test_full) | public (label.dat.test).")
        ] = "full",
        out: Annotated[Path, typer.Option(help="Results JSON (resumed when present).")] = Path(
            "rphgnn_results.json"
        ),
        cache: Annotated[
            Path | None, typer.Option(help="Folder for pre-computed groups (reused per seed).")
        ] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
        feature_store: Annotated[
            bool, typer.Option(help="Serve the groups through a PinnedFeatureStore per key.")
        ] = False,
    ) -> None:
        """Pre-compute relation groups by even-odd propagation + random projection, then train."""
        import dataclasses
        import statistics

        import torch

        from batchcraft.graph.rphgnn_pipeline import (
            METHODS,
            PRESETS,
            RpHGNNConfig,
            fit_node_classifier,
            load_dataset,
            precompute_groups,
        )
        from batchcraft.utils.io import load_checkpoint, load_json, save_checkpoint, write_json
        from batchcraft.utils.progress import console

        if method not in METHODS:
            raise typer.BadParameter(f"method must be one of {METHODS}, got {method!r}")
        if test_labels not in ("full", "public"):
            raise typer.BadParameter("test-labels must be 'full' or 'public'")
        try:
            data = load_dataset(dataset, test_labels=test_labels)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        cfg = PRESETS.get(data.name, RpHGNNConfig())
        if iterations is not None:
            cfg = dataclasses.replace(cfg, num_iterations=iterations)
        if epochs is not None:
            cfg = dataclasses.replace(cfg, epochs=epochs)
        done = load_json(out) if out.exists() else {"runs": []}
        key = {"dataset": data.name, "method": method, "config": dataclasses.asdict(cfg)}
        runs = [r for r in done.get("runs", []) if r.get("key") == key]
        console.print(
            f"{data.name}: target {data.target}, {data.graph.num_nodes_dict}, test on {data.test_file}; "
            f"{len(runs)} seed(s) already done",
            highlight=False,
        )
        for seed in range(seeds):
            if any(r["seed"] == seed for r in runs):
                continue
            groups = None
            cpath = (
                cache / f"{data.name}_{method}_K{cfg.num_iterations}_s{seed}.pt" if cache else None
            )
            if cpath is not None and cpath.exists():
                groups = load_checkpoint(cpath)
            elif cpath is not None:
                groups = precompute_groups(
                    data, method, cfg, generator=torch.Generator().manual_seed(seed),
                    progress=lambda m: console.print(f"precompute {m}", highlight=False),
                )  # fmt: skip
                save_checkpoint(cpath, groups)

            def on_epoch(epoch: int, m: dict[str, float], seed: int = seed) -> None:
                if epoch % 10 == 0:
                    console.print(
                        f"seed {seed} epoch {epoch}: "
                        + " ".join(f"{k}={v:.4f}" for k, v in m.items()),
                        highlight=False,
                    )

            rec = fit_node_classifier(
                data, method=method, config=cfg, seed=seed, device=device, groups=groups,
                on_epoch=on_epoch, feature_store=feature_store,
                progress=lambda m: console.print(f"precompute {m}", highlight=False),
            )  # fmt: skip
            rec["key"] = key
            done.setdefault("runs", []).append(rec)
            runs.append(rec)
            write_json(out, done)
            console.print(
                f"seed {seed}: test micro-F1 {rec['test_micro']:.4f} macro-F1 {rec['test_macro']:.4f} "
                f"(best epoch {rec['best_epoch']}, precompute {rec['precompute_s']:.1f}s, "
                f"total {rec['total_s']:.1f}s)",
                highlight=False,
            )
        mi = [r["test_micro"] for r in runs]
        ma = [r["test_macro"] for r in runs]

        def sd(v: list[float]) -> float:
            return statistics.stdev(v) if len(v) > 1 else 0.0

        console.print(
            f"{data.name} {method} on {data.test_file}: micro-F1 {statistics.fmean(mi):.4f} ± {sd(mi):.4f}, "
            f"macro-F1 {statistics.fmean(ma):.4f} ± {sd(ma):.4f} over {len(runs)} seed(s); results in {out}",
            highlight=False,
        )
