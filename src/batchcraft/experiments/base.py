"""What an experiment receives (:class:`ExperimentContext`) and returns (:class:`ExperimentResult`)."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from batchcraft.data.paths import find_data_dir
from batchcraft.utils.progress import console, progress_bar

Verdict = Literal["reproduced", "partly", "not reproduced", "not run"]

__all__ = ["ExperimentContext", "ExperimentResult", "Metric", "Verdict"]


@dataclass
class Metric:
    """One measured quantity over seeds, with the paper's value for comparison when one exists.

    Attributes:
        name: short label, e.g. ``"test accuracy (hard batches) [%]"``.
        values: one value per seed (or a single value).
        paper: the paper's figure, as text (``"+7.26 points"``) or ``""``.
        unit: unit string, shown after the number.
    """

    name: str
    values: list[float]
    paper: str = ""
    unit: str = ""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def format(self) -> str:
        """``mean ± std unit`` (std only when there are several seeds)."""
        if not self.values:
            return "n/a"
        m = _num(self.mean)
        s = f" ± {_num(self.std)}" if len(self.values) > 1 else ""
        return f"{m}{s}{(' ' + self.unit) if self.unit else ''}"


def _num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    a = abs(x)
    if a != 0 and (a >= 1e5 or a < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


@dataclass
class ExperimentResult:
    """What one experiment found.

    Attributes:
        metrics: the measured quantities (mean ± std over seeds is computed from them).
        verdict: ``"reproduced"``, ``"partly"`` or ``"not reproduced"``, decided by the experiment
            from its own measurements (never hand-written).
        summary: plain-words explanation of the verdict.
        plots: file names (relative to the experiment's output folder) of PNG plots.
        tables: Markdown tables to show under the summary.
        setting: what was run (sizes, steps, data), so the figure can be reproduced.
        data: any extra JSON-serialisable raw numbers.
    """

    metrics: list[Metric]
    verdict: Verdict
    summary: str
    plots: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    setting: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [
            {**asdict(m), "mean": m.mean, "std": m.std, "formatted": m.format()}
            for m in self.metrics
        ]
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ExperimentResult:
        metrics = [
            Metric(m["name"], list(m["values"]), m.get("paper", ""), m.get("unit", ""))
            for m in d.get("metrics", [])
        ]
        return ExperimentResult(
            metrics=metrics,
            verdict=d["verdict"],
            summary=d["summary"],
            plots=list(d.get("plots", [])),
            tables=list(d.get("tables", [])),
            setting=d.get("setting", ""),
            data=dict(d.get("data", {})),
        )


@dataclass
class ExperimentContext:
    """Everything an experiment needs from the runner.

    Attributes:
        name: the experiment's registered name.
        quick: the ``--quick`` (laptop, minutes) setting when True, else the documented full setting.
        out_dir: this experiment's own output folder (plots, checkpoints, raw results).
        seeds: seeds to average over; each run builds its own ``torch.Generator`` from one.
        device: where to run (``cpu`` unless CUDA is present and allowed).
        data_dir: real-data folder, or ``None`` (use the synthetic default).
    """

    name: str
    quick: bool
    out_dir: Path
    seeds: list[int]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    data_dir: Path | None = field(default_factory=find_data_dir)

    def generator(self, seed: int) -> torch.Generator:
        """A private generator seeded with ``seed`` (never the global RNG)."""
        return torch.Generator().manual_seed(seed)

    def log(self, msg: str) -> None:
        console.print(f"[{self.name}] {msg}", highlight=False)

    def progress(self, total: int | None, description: str):  # type: ignore[no-untyped-def]
        """A progress context (``with ctx.progress(n, "training") as p: p.advance()``)."""
        return progress_bar(total, f"{self.name}: {description}")

    def save_figure(self, fig: Any, filename: str) -> str:
        """Save a matplotlib figure as PNG in ``out_dir`` and close it; returns the file name."""
        import matplotlib.pyplot as plt

        path = self.out_dir / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(fig)
        return filename
