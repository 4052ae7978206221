"""One registry for everything runnable by name: experiments and benchmarks.

Experiments (paper-claim reproductions) live in ``batchcraft/experiments/<name>.py`` and register
with :func:`register_experiment`; benchmarks live in ``batchcraft/benchmarks/bench_<component>.py``
and register with :func:`register_benchmark`. Both are discovered by importing their package's
modules, so they work from an installed wheel, whatever the current folder. Benchmark scripts of
your own (``bench_*.py`` files in a folder named by ``$BATCHCRAFT_BENCHMARKS``) are imported too.

A component adds its entries with a decorator and nothing else::

    @register_experiment("adan", paper="Adan (arXiv 2208.06677)", claim="...", quick_minutes=2)
    def run(ctx: ExperimentContext) -> ExperimentResult: ...

    @register_benchmark("adan", description="ms/step and GB/s vs copy bandwidth")
    def main(quick: bool = False) -> dict: ...
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchcraft.experiments.base import ExperimentContext, ExperimentResult

__all__ = [
    "BenchmarkSpec",
    "ExperimentSpec",
    "benchmarks",
    "experiments",
    "find_benchmarks_dir",
    "register_benchmark",
    "register_experiment",
]


@dataclass
class ExperimentSpec:
    """A registered reproduction of one paper claim."""

    name: str
    fn: Callable[[ExperimentContext], ExperimentResult]
    paper: str
    claim: str
    quick_minutes: float = 1.0
    full_setting: str = ""
    order: int = 100


@dataclass
class BenchmarkSpec:
    """A registered benchmark: ``fn(quick=...) -> dict`` with at least a ``rows`` list."""

    name: str
    fn: Callable[..., dict[str, Any]]
    description: str = ""
    script: str = ""
    tags: list[str] = field(default_factory=list)


BENCHMARKS_ENV = "BATCHCRAFT_BENCHMARKS"
_EXPERIMENTS: dict[str, ExperimentSpec] = {}
_BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_experiment(
    name: str,
    *,
    paper: str,
    claim: str,
    quick_minutes: float = 1.0,
    full_setting: str = "",
    order: int = 100,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn(ctx) -> ExperimentResult`` under ``name``.

    Args:
        name: the name used on the command line (``batchcraft reproduce NAME``).
        paper: paper title and arXiv id.
        claim: the headline claim being reproduced, one sentence.
        quick_minutes: expected duration of the ``--quick`` setting on 2 CPU cores.
        full_setting: what ``--full`` runs (documented in the report).
        order: position in the report (lower first).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _EXPERIMENTS and _EXPERIMENTS[name].fn is not fn:
            raise ValueError(f"experiment {name!r} is registered twice")
        _EXPERIMENTS[name] = ExperimentSpec(
            name, fn, paper, claim, quick_minutes, full_setting, order
        )
        return fn

    return deco


def register_benchmark(
    name: str, *, description: str = "", tags: list[str] | None = None
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Decorator registering a benchmark ``fn(quick: bool = False) -> dict`` under ``name``."""

    def deco(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        script = getattr(sys.modules.get(fn.__module__), "__file__", "") or ""
        _BENCHMARKS[name] = BenchmarkSpec(name, fn, description, script, list(tags or []))
        return fn

    return deco


def _load_experiment_modules() -> None:
    import batchcraft.experiments as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name not in ("base", "report", "runner"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


def experiments() -> dict[str, ExperimentSpec]:
    """All registered experiments, in report order."""
    _load_experiment_modules()
    return dict(sorted(_EXPERIMENTS.items(), key=lambda kv: (kv[1].order, kv[0])))


def find_benchmarks_dir() -> Path | None:
    """``$BATCHCRAFT_BENCHMARKS``: a folder of extra ``bench_*.py`` scripts, or ``None``.

    Raises:
        FileNotFoundError: the variable names a folder that does not exist.
    """
    env = os.environ.get(BENCHMARKS_ENV)
    if not env:
        return None
    folder = Path(env)
    if not folder.is_dir():
        raise FileNotFoundError(f"${BENCHMARKS_ENV} names {env!r}, which is not a folder")
    return folder


def _load_benchmark_modules() -> None:
    import batchcraft.benchmarks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("bench_"):
            importlib.import_module(f"{pkg.__name__}.{mod.name}")


def _load_benchmark_scripts(folder: Path) -> None:
    for script in sorted(folder.glob("bench_*.py")):
        modname = f"_batchcraft_bench_{script.stem}"
        if modname in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(modname, script)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)


def benchmarks(bench_dir: Path | None = None) -> dict[str, BenchmarkSpec]:
    """All registered benchmarks: the package's ``bench_*`` modules, plus the ``bench_*.py``
    scripts of ``bench_dir`` (default: :func:`find_benchmarks_dir`)."""
    _load_benchmark_modules()
    folder = bench_dir or find_benchmarks_dir()
    if folder is not None:
        _load_benchmark_scripts(folder)
    return dict(sorted(_BENCHMARKS.items()))
