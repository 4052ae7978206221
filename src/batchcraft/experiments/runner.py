"""Run registered experiments with progress, resume, and a report at the end."""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from batchcraft.data.paths import find_data_dir
from batchcraft.experiments.base import ExperimentContext, ExperimentResult
from batchcraft.experiments.report import write_report
from batchcraft.registry import ExperimentSpec, experiments
from batchcraft.utils.io import load_json, write_json
from batchcraft.utils.progress import console

__all__ = ["result_path", "run_experiments"]


def result_path(out: Path, name: str) -> Path:
    """Where an experiment's result JSON lives (its presence means "finished")."""
    return out / name / "result.json"


def _is_finished(path: Path, quick: bool, seeds: list[int]) -> bool:
    if not path.exists():
        return False
    try:
        rec = load_json(path)
    except (OSError, ValueError):
        return False
    return bool(
        rec.get("quick") == quick and rec.get("seeds") == seeds and rec.get("status") == "ok"
    )


def run_experiments(
    names: Sequence[str] | None,
    *,
    quick: bool,
    out: Path,
    seeds: int = 1,
    force: bool = False,
    command: str = "",
    data_dir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Run experiments by name (all when ``names`` is empty), skipping finished ones.

    Each finished experiment writes ``out/<name>/result.json`` atomically, so an interrupted run
    resumes where it stopped. A failing experiment is recorded as failed (with its traceback)
    and the others still run. Every experiment gets ``data_dir`` as ``ctx.data_dir`` (default:
    :func:`~batchcraft.data.paths.find_data_dir`'s search).

    Returns:
        The result records by name (including previously finished ones).
    """
    registry = experiments()
    if names:
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; available: {sorted(registry)}")
        chosen: list[ExperimentSpec] = [registry[n] for n in names]
    else:
        chosen = list(registry.values())
    seed_list = list(range(seeds))
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        s for s in chosen if force or not _is_finished(result_path(out, s.name), quick, seed_list)
    ]
    est = sum(s.quick_minutes for s in todo) * (1 if quick else 10) * max(1, seeds)
    console.print(
        f"batchcraft reproduce: {len(chosen)} experiment(s), {len(chosen) - len(todo)} already finished, "
        f"estimated {est:.0f} min for the rest",
        highlight=False,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    records: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(chosen):
        path = result_path(out, spec.name)
        if spec not in todo:
            records[spec.name] = load_json(path)
            console.print(
                f"[{i + 1}/{len(chosen)}] {spec.name}: finished earlier, skipped", highlight=False
            )
            continue
        console.print(f"[{i + 1}/{len(chosen)}] {spec.name}: {spec.claim}", highlight=False)
        ctx = ExperimentContext(
            name=spec.name, quick=quick, out_dir=out / spec.name, seeds=seed_list, device=device,
            data_dir=data_dir if data_dir is not None else find_data_dir(),
        )  # fmt: skip
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        record: dict[str, Any] = {
            "name": spec.name,
            "paper": spec.paper,
            "claim": spec.claim,
            "quick": quick,
            "seeds": seed_list,
            "full_setting": spec.full_setting,
            "command": command,
        }
        try:
            result: ExperimentResult = spec.fn(ctx)
            record.update(status="ok", result=result.to_dict())
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failure must not lose the others' results
            record.update(
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
            console.print(f"[red]{escape(f'{spec.name} failed: {exc}')}[/red]", markup=True)
        record["seconds"] = time.time() - t0
        write_json(path, record)
        records[spec.name] = record
        console.print(f"    done in {record['seconds']:.1f}s ({record['status']})", highlight=False)
    # The report covers every finished experiment in this folder, not only the ones run now, so
    # `reproduce a` then `reproduce b` yields one report with both.
    all_records = []
    for name in registry:
        if name in records:
            all_records.append(records[name])
        elif result_path(out, name).exists():
            all_records.append(load_json(result_path(out, name)))
    write_report(out, all_records)
    return records
