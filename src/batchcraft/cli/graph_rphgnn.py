"""``batchcraft graph rphgnn``: pre-compute and train RpHGNN (or a baseline) on HGB data or the SBM.

Thin: resolves the dataset (``--data-dir``, ``$BATCHCRAFT_DATA``, ``../shared/data``), applies the
dataset's preset (the official hyper-parameters) with any overrides, and runs
:func:`batchcraft.recipes.rphgnn.fit_node_classifier` per seed. Every finished seed is
appended to ``--out`` atomically, so an interrupted run resumes where it stopped; ``--cache``
keeps the pre-computed groups on disk (safetensors) and reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from batchcraft.cli._common import output_file

__all__ = ["register"]

# configuration fields that change the pre-computed groups (part of the cache file name)
_PRECOMPUTE_FIELDS = (
    "num_iterations", "embedding_size", "use_input", "use_all_features", "even_odd", "kernel",
    "baseline_hops",
)  # fmt: skip


def _cache_path(cache: Path, name: str, method: str, cfg: Any, seed: int) -> Path:
    fields = {k: getattr(cfg, k) for k in _PRECOMPUTE_FIELDS}
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return cache / f"{name}_{method}_K{cfg.num_iterations}_{digest}_s{seed}.safetensors"


def _save_groups(path: Path, groups: dict[str, Any]) -> None:
    """Groups as safetensors (tensors only, no pickle), their order kept in the metadata."""
    from safetensors.torch import save

    from batchcraft.utils.io import atomic_write

    blob = save(
        {k: v.contiguous() for k, v in groups.items()}, metadata={"order": json.dumps(list(groups))}
    )
    atomic_write(path, lambda f: f.write(blob))


def _load_groups(path: Path) -> dict[str, Any]:
    """Inverse of :func:`_save_groups`, in the saved key order (the model's layer order)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get("order", "null")) or sorted(f.keys())
        return {k: f.get_tensor(k) for k in order}


def register(app: typer.Typer) -> None:
    """Add the ``rphgnn`` command to the ``graph`` group."""

    @app.command("rphgnn")
    def rphgnn(
        dataset: Annotated[
            str,
            typer.Option(
                help="sbm | ACM | DBLP | IMDB (looked up in the data folder) | an HGB folder/zip."
            ),
        ] = "sbm",
        method: Annotated[
            str, typer.Option(help="rphgnn | relation_wise | sehgnn | nars | mlp.")
        ] = "rphgnn",
        iterations: Annotated[
            int | None, typer.Option("--iterations", "-K", help="K (default: the preset).")
        ] = None,
        epochs: Annotated[
            int | None, typer.Option(help="Max epochs (default: the preset).")
        ] = None,
        seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..n-1 (mean ± std).")] = 1,
        test_labels: Annotated[
            str,
            typer.Option(
                help="auto (label.dat.test_full when it agrees with label.dat.test, else the file "
                "consistent with label.dat) | full | public."
            ),
        ] = "auto",
        data_dir: Annotated[
            Path | None,
            typer.Option(
                help="Folder holding ACM.zip, DBLP.zip, ... (default: $BATCHCRAFT_DATA, then "
                "../shared/data)."
            ),
        ] = None,
        out: Annotated[
            Path,
            typer.Option(callback=output_file, help="Results JSON (resumed when present)."),
        ] = Path("rphgnn_results.json"),
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
        import time

        import torch
        from safetensors import SafetensorError

        from batchcraft.recipes.rphgnn import (
            METHODS,
            PRESETS,
            RpHGNNConfig,
            fit_node_classifier,
            load_dataset,
            precompute_groups,
        )
        from batchcraft.utils.io import load_json, write_json
        from batchcraft.utils.progress import console

        if method not in METHODS:
            raise typer.BadParameter(f"method must be one of {METHODS}, got {method!r}")
        if test_labels not in ("auto", "full", "public"):
            raise typer.BadParameter(
                f"test-labels must be 'auto', 'full' or 'public', got {test_labels!r}"
            )
        try:
            data = load_dataset(dataset, data_dir=data_dir, test_labels=test_labels)
            cfg = PRESETS.get(data.name, RpHGNNConfig())
            if iterations is not None:
                cfg = dataclasses.replace(cfg, num_iterations=iterations)
            if epochs is not None:
                cfg = dataclasses.replace(cfg, epochs=epochs)
        except (ValueError, FileNotFoundError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        done = load_json(out) if out.exists() else {"runs": []}
        key = {"dataset": data.name, "method": method, "config": dataclasses.asdict(cfg)}
        key["test_file"] = data.test_file
        runs = [r for r in done.get("runs", []) if r.get("key") == key]
        console.print(
            f"{data.name}: target {data.target}, {data.graph.num_nodes_dict}; "
            f"{len(runs)} seed(s) already done",
            highlight=False,
        )
        console.print(
            f"test labels: {data.test_file}"
            + (f" ({data.test_file_reason})" if data.test_file_reason else ""),
            highlight=False,
        )

        def progress(m: str) -> None:
            console.print(f"precompute {m}", highlight=False)

        for seed in range(seeds):
            if any(r["seed"] == seed for r in runs):
                continue
            groups = None
            source, pre_s = "computed", None
            cpath = _cache_path(cache, data.name, method, cfg, seed) if cache else None
            if cpath is not None and cpath.exists():
                t0 = time.perf_counter()
                try:
                    groups = _load_groups(cpath)
                except (SafetensorError, OSError, ValueError, KeyError) as exc:
                    raise typer.BadParameter(
                        f"cache file {cpath} is unreadable ({exc}); delete it to recompute"
                    ) from exc
                source = "cache"
                console.print(
                    f"precompute: loaded from cache {cpath} ({time.perf_counter() - t0:.2f}s)",
                    highlight=False,
                )
            elif cpath is not None:
                t0 = time.perf_counter()
                groups = precompute_groups(
                    data, method, cfg, generator=torch.Generator().manual_seed(seed),
                    progress=progress,
                )  # fmt: skip
                pre_s = time.perf_counter() - t0
                _save_groups(cpath, groups)

            def on_epoch(epoch: int, m: dict[str, float], seed: int = seed) -> None:
                if epoch % 10 == 0:
                    console.print(
                        f"seed {seed} epoch {epoch}: "
                        + " ".join(f"{k}={v:.4f}" for k, v in m.items()),
                        highlight=False,
                    )

            rec = fit_node_classifier(
                data, method=method, config=cfg, seed=seed, device=device, groups=groups,
                on_epoch=on_epoch, feature_store=feature_store, progress=progress,
                precompute_s=pre_s,
            )  # fmt: skip
            rec["key"] = key
            rec["groups_source"] = source
            done.setdefault("runs", []).append(rec)
            runs.append(rec)
            write_json(out, done)
            pre = (
                "precompute loaded from cache"
                if source == "cache"
                else f"precompute {rec['precompute_s']:.2f}s"
            )
            console.print(
                f"seed {seed}: test micro-F1 {rec['test_micro']:.4f} macro-F1 {rec['test_macro']:.4f} "
                f"(best epoch {rec['best_epoch']}, {pre}, total {rec['total_s']:.1f}s)",
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
