"""``batchcraft`` command line: ``info``, ``bench``, ``reproduce`` and component sub-commands.

Component command groups (``lm``, ``nvs``, ``graph``) live in their own modules under
``batchcraft/cli/``; each exposes ``register(app: typer.Typer)`` and is listed in
:data:`SUBCOMMANDS`. A listed module that does not exist yet is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchcraft.cli.errors import BatchcraftGroup, fail

app = typer.Typer(
    cls=BatchcraftGroup,
    name="batchcraft",
    help="Efficient mini-batch training for PyTorch: seven research results, tested and measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# group name -> (help, modules that add commands to it)
SUBCOMMANDS: dict[str, tuple[str, list[str]]] = {
    "lm": ("LaCT language model: train, eval, generate.", ["batchcraft.cli.lm"]),
    "nvs": ("LaCT novel view synthesis toy: train, eval, render.", ["batchcraft.cli.nvs"]),
    "graph": (
        "Graph learning: GraphSAGE with zero-copy gathering, RpHGNN.",
        ["batchcraft.cli.graph_sage", "batchcraft.cli.graph_rphgnn"],
    ),
    "selection": (
        "Mini-batch selection: hard batches, CoLM coresets.",
        ["batchcraft.cli.hard_batches", "batchcraft.cli.colm"],
    ),
    "data": ("Corpora: tokenize text into memory-mapped shards.", ["batchcraft.cli.data"]),
}


_ATTACHED = False


def _attach_subcommands() -> None:
    global _ATTACHED
    if _ATTACHED:
        return
    _ATTACHED = True
    for group, (help_text, modules) in SUBCOMMANDS.items():
        present = [m for m in modules if importlib.util.find_spec(m) is not None]
        if not present:
            continue
        sub = typer.Typer(help=help_text, no_args_is_help=True)
        for m in present:
            importlib.import_module(m).register(sub)
        app.add_typer(sub, name=group)


def _version(value: bool) -> None:
    if value:
        from batchcraft import __version__

        typer.echo(f"batchcraft {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress.")
    ] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail.")] = 0,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for expected errors too.")
    ] = False,
) -> None:
    """Efficient mini-batch training for PyTorch: seven research results, tested and measured."""
    from batchcraft.utils.log import configure_logging

    del version, debug  # --version is handled eagerly, --debug by the error layer
    configure_logging(-1 if quiet else verbose)


@app.command()
def info(
    peak: Annotated[
        bool, typer.Option(help="Measure fp32 batched-matmul GFLOP/s and copy GB/s.")
    ] = True,
) -> None:
    """Versions, CUDA, Triton, threads, and this machine's measured matmul and copy limits."""
    from rich.table import Table

    from batchcraft import __version__
    from batchcraft._capabilities import summary
    from batchcraft.utils.bench import copy_bandwidth_gbs, matmul_peak_gflops
    from batchcraft.utils.progress import console

    table = Table(title=f"batchcraft {__version__}", show_header=False)
    for k, v in summary().items():
        table.add_row(k, "—" if v is None else str(v))
    if peak:
        table.add_row("fp32 bmm GFLOP/s (8x512^3)", f"{matmul_peak_gflops():.1f}")
        table.add_row("copy GB/s (fp32, 128 MiB)", f"{copy_bandwidth_gbs():.1f}")
    console.print(table)


@app.command()
def bench(
    names: Annotated[
        list[str] | None, typer.Argument(help="Benchmark names, 'all', or nothing to list.")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Smaller sizes for a fast look.")] = False,
    markdown: Annotated[
        Path | None, typer.Option(help="Append the result tables (Markdown) to this file.")
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(help="Where the time goes, per component (benchmarks that support it)."),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the JSON results (default: benchmarks/results in a checkout, "
            "else the user cache folder)."
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List benchmarks and exit.")] = False,
) -> None:
    """Run benchmarks by name (``batchcraft bench lact-op``); ``all`` runs every one.

    The benchmarks ship inside the package (``batchcraft.benchmarks``), so this works from any
    folder; ``$BATCHCRAFT_BENCHMARKS`` may name a folder of extra ``bench_*.py`` scripts.
    """
    import inspect
    import os

    from batchcraft.registry import benchmarks
    from batchcraft.utils.bench import RESULTS_ENV, format_table, results_dir, summary_rows
    from batchcraft.utils.progress import console

    registry = benchmarks()
    if list_ or not names:
        if not registry:
            fail("no benchmarks registered (the batchcraft.benchmarks package is missing)")
        for name, spec in registry.items():
            console.print(f"{name:24s} {spec.description}", highlight=False)
        return
    chosen = list(registry) if names == ["all"] else names
    unknown = [n for n in chosen if n not in registry]
    if unknown:
        fail(f"unknown benchmark(s) {unknown}; available: {sorted(registry)}")
    if profile:
        chosen = [n for n in chosen if "profile" in inspect.signature(registry[n].fn).parameters]
        if not chosen:
            fail("none of these benchmarks has a --profile mode")
    if out is not None:
        from batchcraft.utils.io import check_writable_dir

        check_writable_dir(out)  # before any work
        os.environ[RESULTS_ENV] = str(out.resolve())  # benchmark subprocesses inherit it
    sections: list[str] = []
    summary: list[dict[str, object]] = []
    for n in chosen:
        console.print(f"== {n} ==", highlight=False)
        res = registry[n].fn(quick=quick, **({"profile": True} if profile else {}))
        rows = res.get("rows", [])
        summary += summary_rows(n, rows)
        flag = (" --quick" if quick else "") + (" --profile" if profile else "")
        sections.append(f"### {n}\n\nCommand: `batchcraft bench {n}{flag}`\n\n{format_table(rows)}")
    if len(chosen) > 1:
        # one table of every ratio and fraction of a machine limit, across all benchmarks run
        table = format_table(summary, ["benchmark", "case", "quantity", "value"])
        sections.insert(0, f"### Summary: ratios and fractions of machine limits\n\n{table}")
        print(table)
    if markdown is not None:
        with open(markdown, "a", encoding="utf-8") as f:
            f.write("\n".join(sections))
    console.print(f"results: {results_dir().resolve()}", highlight=False)


@app.command()
def reproduce(
    names: Annotated[
        list[str] | None, typer.Argument(help="Experiments to run (default: all).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="Laptop setting or the documented full one.")
    ] = True,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports"),
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per experiment (mean ± std).")] = 1,
    force: Annotated[bool, typer.Option(help="Re-run experiments that already finished.")] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Real-data folder (cora.zip, ACM.zip, fashion-mnist/, ...); default: "
            "$BATCHCRAFT_DATA, else ../shared/data; experiments fall back to synthetic data."
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List experiments and exit.")] = False,
) -> None:
    """Reproduce each paper's headline claim and write ``reports/summary.md`` + ``index.html``."""
    from batchcraft._capabilities import has_module
    from batchcraft.data.paths import find_data_dir
    from batchcraft.experiments.runner import run_experiments
    from batchcraft.registry import experiments
    from batchcraft.utils.progress import console

    if list_:
        for name, spec in experiments().items():
            t = spec.quick_minutes
            took = "<1 min" if t < 1 else f"~{t:.0f} min"
            console.print(f"{name:22s} {took:>7s}  {spec.claim}", highlight=False)
        return
    from batchcraft.utils.io import check_writable_dir

    registry = experiments()
    unknown = [n for n in names or [] if n not in registry]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; available: {sorted(registry)}")
    folder = find_data_dir(data_dir)  # a --data-dir that does not exist is an error, up front
    if not has_module("matplotlib"):  # every experiment plots; fail now, not after training
        fail("reproduce draws plots: matplotlib is not installed; pip install 'batchcraft[plot]'")
    command = "batchcraft " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    check_writable_dir(out)  # before any experiment runs
    console.print(f"real data: {folder or 'none found (synthetic stand-ins)'}", highlight=False)
    records = run_experiments(
        names, quick=quick, out=out, seeds=seeds, force=force, command=command, data_dir=folder
    )
    console.print(f"report: {out / 'summary.md'} and {out / 'index.html'}", highlight=False)
    if any(r.get("status") != "ok" for r in records.values()):
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``batchcraft`` console script."""
    app()


_attach_subcommands()


if __name__ == "__main__":
    main()
