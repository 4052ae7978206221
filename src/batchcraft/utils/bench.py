"""Timing and machine limits shared by every benchmark.

Benchmarks report ratios measured side by side in one run, and fractions of a machine limit
measured in the same run: :func:`matmul_peak_gflops` (batched fp32 matmul) and
:func:`copy_bandwidth_gbs` (a large tensor copy). Results are written as JSON with
:func:`write_result` into :func:`results_dir`.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from batchcraft.utils.io import cache_dir, write_json

__all__ = [
    "PeakRSS",
    "Timing",
    "copy_bandwidth_gbs",
    "format_table",
    "is_checkout",
    "machine_description",
    "matmul_peak_gflops",
    "print_table",
    "proc_status_bytes",
    "results_dir",
    "rss_bytes",
    "summary_rows",
    "timeit",
    "write_result",
]


class Timing(dict):
    """Median/min/mean seconds of repeated runs (a dict so it serialises as JSON)."""

    @property
    def median(self) -> float:
        return float(self["median_s"])


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    min_time: float = 0.0,
    device: torch.device | str | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeat`` timed calls.

    Args:
        fn: the work to time; its result is discarded.
        warmup: untimed calls first (compilation, caches, allocator).
        repeat: minimum number of timed calls.
        min_time: keep calling until this many seconds have been timed in total.
        device: synchronise this CUDA device around each call.

    Returns:
        A :class:`Timing` with ``median_s``, ``min_s``, ``mean_s`` and ``n``.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    total = 0.0
    while len(times) < repeat or total < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
        if len(times) >= 1000:
            break
    return Timing(
        median_s=statistics.median(times),
        min_s=min(times),
        mean_s=statistics.fmean(times),
        n=len(times),
    )


def matmul_peak_gflops(
    *,
    batch: int = 8,
    size: int = 512,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeat: int = 5,
) -> float:
    """Measured batched-matmul throughput of this machine in GFLOP/s (``2*b*n^3`` per call).

    This is the "machine peak" every compute-bound benchmark divides by. It is the best of
    ``repeat`` timed calls of ``torch.bmm`` on ``[batch, size, size]`` operands.
    """
    a = torch.randn(batch, size, size, dtype=dtype, device=device)
    b = torch.randn(batch, size, size, dtype=dtype, device=device)
    t = timeit(lambda: torch.bmm(a, b), warmup=2, repeat=repeat, device=device)
    return 2.0 * batch * size**3 / t["min_s"] / 1e9


def copy_bandwidth_gbs(
    *, numel: int = 32 * 2**20, device: torch.device | str = "cpu", repeat: int = 5
) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written) for fp32 ``dst.copy_(src)``."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), warmup=2, repeat=repeat, device=device)
    return 2.0 * numel * 4 / t["min_s"] / 1e9


RESULTS_ENV = "BATCHCRAFT_RESULTS"


def is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the root of a batchcraft source checkout."""
    return (folder / "pyproject.toml").is_file() and (folder / "src" / "batchcraft").is_dir()


def results_dir() -> Path:
    """Where benchmark JSON results go.

    ``$BATCHCRAFT_RESULTS`` (``batchcraft bench --out DIR`` sets it); else ``benchmarks/results``
    when the current folder is a batchcraft checkout; else ``bench-results`` in the user cache
    folder (:func:`batchcraft.utils.io.cache_dir`), so a run from any other folder leaves it
    untouched.
    """
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    if is_checkout(Path.cwd()):
        return Path("benchmarks") / "results"
    return cache_dir() / "bench-results"


def machine_description() -> dict[str, Any]:
    """Hardware and software the figures were measured on."""
    import platform

    desc: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    desc["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        desc["gpu"] = torch.cuda.get_device_name(0)
    return desc


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``<results_dir()>/<name>.json`` atomically, adding the machine description."""
    payload = {"benchmark": name, "machine": machine_description(), "time": time.time(), **data}
    return write_json(results_dir() / f"{name}.json", payload)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts), columns in first-seen order unless given."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        cols: list[str] = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        columns = cols
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = ""
) -> None:
    """Print a Markdown table (so it can be pasted into BENCHMARKS.md)."""
    if title:
        print(f"\n### {title}\n")
    print(format_table(rows, columns))


_RATIO_WORD = re.compile(r"(%|(^|[ _])x( |_|$)|ratio|frac|\bvs\b|speed)", re.IGNORECASE)
# "a/b" is a ratio unless it is a rate or a unit (ms/step, GB/s, tokens/s, ...)
_RATE = re.compile(
    r"(GB|MB|MiB|ms|µs|us|tokens?|Mtok|GFLOP|TFLOP)/|/\s*(s|step|round|token|epoch)\b"
)


def _is_ratio_column(col: str) -> bool:
    return bool(_RATIO_WORD.search(col)) or ("/" in col and not _RATE.search(col))


def summary_rows(name: str, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ratios and fractions of machine limits of one benchmark's table, one row each.

    A column counts when its name says it is a ratio or a fraction (``%``, ``x ...``, ``ratio``,
    ``a/b``, ``frac``, ``vs``, ``speed``) and the cell is a number; the row's text cells name the
    case. Used by ``batchcraft bench all`` to print one table across every benchmark.

    Returns:
        Rows ``{"benchmark", "case", "quantity", "value"}``.
    """
    out: list[dict[str, Any]] = []
    for row in rows:
        case = ", ".join(
            f"{k}={v}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)
            for k, v in row.items()
            if not _is_ratio_column(k) and v not in ("", None) and not isinstance(v, float)
        )
        for col, val in row.items():
            if _is_ratio_column(col) and isinstance(val, int | float) and not isinstance(val, bool):
                out.append({"benchmark": name, "case": case, "quantity": col, "value": float(val)})
    return out


# ------------------------------------------------------------------------- process memory
def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def proc_status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes, or ``None``
    where it cannot be read (not Linux)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (``VmHWM``) of this process; False if the
    kernel or the sandbox does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident-set growth (``.peak``, bytes) while the block runs.

    Where Linux lets the process reset its high-water mark, the peak is the kernel's (exact,
    however short the block); otherwise, and in addition, RSS is sampled every 2 ms.
    """

    def __enter__(self) -> PeakRSS:
        self._hwm = reset_peak_rss()
        self.base, self.peak, self._stop = rss_bytes(), 0, threading.Event()
        self._th = threading.Thread(target=self._sample, daemon=True)
        self._th.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._th.join()
        hwm = (proc_status_bytes("VmHWM") or 0) if self._hwm else 0
        self.peak = max(self.peak, rss_bytes(), hwm) - self.base
