"""Benchmark ``lact-op``: the LaCT core op over chunk sizes, reference vs fast path vs causal SDPA.

Run: ``batchcraft bench lact-op`` (add ``--quick``) or ``python -m batchcraft.benchmarks.bench_lact [--quick]``.

Correctness gate first (fast path == reference in fp64 on outputs, all input gradients and the final
state, at a small size). Then, in one run, at T = 16K tokens, fp32: ``chunk_lact`` and ``naive_lact``
forward and forward+backward over C in {16, 64, 256, 1024, 2048, 4096} at D = Dh = 256 (and
D = 128, 512 at C = 2048), plus causal SDPA full attention at the same T as the quadratic peer.
The headline comparison (fast vs reference at C = 2048, D = 256) runs both paths in 3
interleaved runs and reports the median per-run ratio with its min and max.
GFLOP/s counts 18*D*Dh per token per head forward (Muon off), x3 for forward+backward; "% peak" is
relative to :func:`batchcraft.utils.bench.matmul_peak_gflops` measured in the same run (best of a
measurement before and after the sweep) on square operands with the work of one of the op's
matmuls at C = 2048 (size 512 for D = 256). Targets are reported, not asserted.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import torch

from batchcraft.ops.lact import lact
from batchcraft.ops.lact.profile import (
    LaCTCase,
    chunk_sweep,
    lact_case_flops,
    make_case,
    op_peak_gflops,
    peak_size,
    time_lact,
    time_sdpa,
)
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import print_table, write_result

T_BENCH = 16384
CHUNKS = (16, 64, 256, 1024, 2048, 4096)
RUNS = 3  # interleaved runs of the reference-vs-fast comparison at C = 2048


def correctness_gate() -> float:
    """fp64 chunk == naive on outputs, grads of q, k, v, lr, beta, W0 and the final state; max abs error."""
    case = LaCTCase(T=45, D=12, C=8, B=2, H=2, Dh=24)
    q, k, v, lr, w = make_case(case, dtype=torch.float64)
    beta = torch.rand(2, 45, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    leaves = [q, k, v, lr, beta, *[t for t in w if t is not None]]
    for t in leaves:
        t.requires_grad_(True)
    res = []
    for impl in ("naive", "chunk"):
        o, st = lact(q, k, v, lr, w, chunk_size=8, beta=beta, muon="tuned", impl=impl)
        loss = (o * o.detach().sin()).sum() + sum(
            (t * t.detach().cos()).sum() for t in st.weights if t is not None
        )
        res.append([o, *st.tensors().values(), *torch.autograd.grad(loss, leaves)])
    err = max(
        float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1.0))
        for a, b in zip(*res, strict=True)
    )
    if err > 1e-8:
        raise RuntimeError(
            f"lact-op correctness gate failed: chunk vs naive max scaled error {err:.3e}"
        )
    return err


def _interleaved_vs_reference(
    peak: float, *, D: int = 256, C: int = 2048, log: Any = None
) -> list[dict[str, Any]]:
    """Reference and fast path at (D, C), forward and forward+backward, timed in ``RUNS``
    interleaved runs; each row holds the median seconds and, for the fast path, the median
    [min, max] of the per-run ratios reference / fast."""
    case = LaCTCase(T=T_BENCH, D=D, C=C)
    times: dict[tuple[str, bool], list[float]] = {}
    for run in range(RUNS):
        for impl in ("naive", "chunk"):
            for bw in (False, True):
                r = time_lact(case, impl=impl, backward=bw, repeat=1, warmup=int(run == 0))
                times.setdefault((impl, bw), []).append(r["seconds"])
    rows: list[dict[str, Any]] = []
    for impl in ("chunk", "naive"):
        for bw in (False, True):
            sec = statistics.median(times[(impl, bw)])
            gflops = lact_case_flops(case, backward=bw) / sec / 1e9
            row: dict[str, Any] = {
                "D": D, "C": C, "impl": impl, "pass": "fwd+bwd" if bw else "fwd",
                "seconds": sec, "GFLOP/s": gflops, "% peak": 100 * gflops / peak,
                "tokens/s": T_BENCH / sec,
            }  # fmt: skip
            if impl == "chunk":
                ratios = [
                    a / b for a, b in zip(times[("naive", bw)], times[(impl, bw)], strict=True)
                ]
                row["x ref"] = statistics.median(ratios)
                row["x ref min"], row["x ref max"] = min(ratios), max(ratios)
            rows.append(row)
            if log is not None:
                log(f"D={D} C={C} {impl} {row['pass']}: median {sec:.3f} s of {RUNS} runs")
    return rows


@register_benchmark(
    "lact-op", description="LaCT op GFLOP/s and % of matmul peak vs chunk size; fast vs reference"
)
def main(quick: bool = False) -> dict[str, Any]:
    err = correctness_gate()
    print(
        f"correctness gate: chunk == naive (fp64, outputs, all grads, state), max scaled error {err:.2e}"
    )
    peaks = {D: op_peak_gflops(D) for D in ((256,) if quick else (128, 256, 512))}
    chunks = (16, 256, 2048) if quick else CHUNKS
    rows: list[dict[str, Any]] = []

    def skip(impl: str, C: int, bw: bool) -> bool:
        if impl == "naive":  # the reference is slow: C = 2048 is timed side by side below
            return quick or C != 256
        return C == 2048 or (quick and bw)  # C = 2048: the interleaved runs below

    rows += chunk_sweep(
        D=256,
        T=T_BENCH,
        chunks=chunks,
        impls=("chunk", "naive"),
        backward=(False, True),
        peak_gflops=peaks[256],
        skip=skip,
        log=print,
    )
    rows += _interleaved_vs_reference(peaks[256], log=print)
    if not quick:
        for D in (128, 512):
            rows += chunk_sweep(
                D=D,
                T=T_BENCH,
                chunks=(2048,),
                impls=("chunk", "naive"),
                backward=(False, True),
                peak_gflops=peaks[D],
                skip=lambda impl, C, bw: impl == "naive" and bw,
                log=print,
            )
    # the quadratic peer: causal full attention at the same T, one head of the same width
    for bw in (False,) if quick else (False, True):
        r = time_sdpa(B=1, T=T_BENCH, H=1, D=256, backward=bw, repeat=1)
        rows.append(
            {
                "D": 256,
                "C": "-",
                "impl": "sdpa-causal",
                "pass": "fwd+bwd" if bw else "fwd",
                "seconds": r["seconds"],
                "GFLOP/s": r["gflops"],
                "% peak": 100 * r["gflops"] / peaks[256],
                "tokens/s": r["tokens_per_s"],
            }
        )
    # re-measure the peak after the sweep; keep the best (load on a shared machine only lowers it)
    for D in peaks:
        peaks[D] = max(peaks[D], op_peak_gflops(D))
    for row in rows:
        row["% peak"] = 100.0 * row["GFLOP/s"] / peaks[row["D"]]
    # speed-up of the fast path over the reference, same (D, C, pass); at C = 2048 the median
    # of the per-run ratios of the interleaved runs (with their min and max)
    ref = {(r["D"], r["C"], r["pass"]): r["seconds"] for r in rows if r["impl"] == "naive"}
    for row in rows:
        key = (row["D"], row["C"], row["pass"])
        if "x ref" not in row:
            row["x ref"] = (
                ref[key] / row["seconds"] if key in ref and row["impl"] != "naive" else ""
            )

    def get(D: int, C: int, impl: str, p: str) -> dict[str, Any] | None:
        return next(
            (r for r in rows if (r["D"], r["C"], r["impl"], r["pass"]) == (D, C, impl, p)), None
        )

    fwd2048, fwd16 = get(256, 2048, "chunk", "fwd"), get(256, 16, "chunk", "fwd")
    fb2048 = get(256, 2048, "chunk", "fwd+bwd")

    def spread(row: dict[str, Any] | None) -> str | None:
        if row is None:
            return None
        return f"{row['x ref']:.2f} [{row['x ref min']:.2f}, {row['x ref max']:.2f}]"

    targets = {
        "fwd % peak at C=2048, D=256 (target >= 60)": fwd2048 and fwd2048["% peak"],
        "fwd+bwd % peak at C=2048, D=256 (target >= 35)": fb2048 and fb2048["% peak"],
        "utilisation C=2048 / C=16 (target >= 10)": fwd2048
        and fwd16
        and fwd2048["GFLOP/s"] / fwd16["GFLOP/s"],
        f"fast / reference fwd at C=2048, median [min, max] of {RUNS} runs (target >= 1.5)": spread(
            fwd2048
        ),
        "fast / reference fwd+bwd at C=2048, median [min, max] of "
        f"{RUNS} runs (target >= 1.5)": spread(fb2048),
    }
    cols = ["D", "C", "impl", "pass", "seconds", "GFLOP/s", "% peak", "x ref", "x ref min",
            "x ref max", "tokens/s"]  # fmt: skip
    print_table(
        rows,
        cols,
        title=f"lact-op, T={T_BENCH}, B=1, H=1, Dh=D, fp32, threads={torch.get_num_threads()}",
    )
    print_table(
        [{"D": D, "peak GFLOP/s": p, "peak operand size": peak_size(D)} for D, p in peaks.items()],
        title="batched fp32 matmul peak (matmul_peak_gflops, batch 8, best of before/after)",
    )
    print_table(
        [{"target": k, "measured": v if v is not None else "n/a"} for k, v in targets.items()],
        title="targets",
    )
    out = {
        "rows": rows,
        "peaks": {str(k): v for k, v in peaks.items()},
        "targets": targets,
        "gate_error": err,
        "T": T_BENCH,
        "quick": quick,
        "flops": "18*D*Dh per token per head forward (Muon off), x3 forward+backward; SDPA 2*T*T*D (causal)",
    }
    write_result("lact-op", out)
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
