"""Reproduce the LaCT hardware-utilisation claim (paper Fig. 1) at laptop scale.

Paper (Zhang et al., "Test-Time Training Done Right", arXiv 2505.23884, Fig. 1): updating the
fast weights once per LARGE chunk turns test-time training into big batched matmuls, raising
hardware utilisation by orders of magnitude over mini-batch-16 TTT (tens of % of peak instead of
< 5 %). Here: the same op (``chunk_lact``, fp32, this CPU) timed over chunk sizes 16 .. 4096 at
T = 16K tokens, D = Dh = 256; utilisation = counted FLOPs (18*D*Dh per token per head) / time,
as a fraction of this machine's batched-matmul peak measured in the same run. The timing code is
:mod:`batchcraft.ops.lact.profile`, shared with ``batchcraft bench lact-op``.
"""

from __future__ import annotations

import itertools
from typing import Any

from batchcraft.experiments.base import ExperimentContext, ExperimentResult, Metric
from batchcraft.registry import register_experiment

CHUNKS = (16, 64, 256, 1024, 2048, 4096)


def _verdict(ratio: float) -> str:
    if ratio >= 10.0:
        return "reproduced"
    if ratio >= 2.0:
        return "partly"
    return "not reproduced"


@register_experiment(
    "lact-utilization",
    paper="Test-Time Training Done Right (LaCT), arXiv 2505.23884",
    claim="Large chunks (2K+ tokens) raise the hardware utilisation of test-time training by orders "
    "of magnitude over small (16-token) chunks (Fig. 1).",
    quick_minutes=0.2,
    full_setting="T=16K, D in {128, 256, 512}, C in {16..4096}, forward and forward+backward",
    order=10,
)
def run(ctx: ExperimentContext) -> ExperimentResult:
    from batchcraft.ops.lact.profile import chunk_sweep, op_peak_gflops
    from batchcraft.utils.bench import format_table
    from batchcraft.utils.plot import pyplot

    T = 16384
    dims = (256,) if ctx.quick else (128, 256, 512)
    passes = (False,) if ctx.quick else (False, True)
    rows: list[dict[str, Any]] = []
    peaks: dict[int, float] = {}
    with ctx.progress(len(dims), "chunk sweep") as bar:
        for D in dims:
            peaks[D] = op_peak_gflops(D)
            rows += chunk_sweep(
                D=D, T=T, chunks=CHUNKS, backward=passes, peak_gflops=peaks[D],
                repeat=1 if ctx.quick else 2, log=ctx.log,
            )  # fmt: skip
            peaks[D] = max(peaks[D], op_peak_gflops(D))  # best of before/after: load only lowers it
            bar.advance()
    for r in rows:
        r["% peak"] = 100.0 * r["GFLOP/s"] / peaks[r["D"]]

    def util(D: int, C: int, p: str = "fwd") -> float:
        return next(r["% peak"] for r in rows if (r["D"], r["C"], r["pass"]) == (D, C, p))

    ratio = util(256, 2048) / util(256, 16)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for D in dims:
        for p in ("fwd", "fwd+bwd") if not ctx.quick else ("fwd",):
            xs = list(CHUNKS)
            ax.plot(xs, [util(D, c, p) for c in xs], marker="o", label=f"D={D} {p}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(CHUNKS), [str(c) for c in CHUNKS])
    ax.set_xlabel("chunk size C (tokens, log scale)")
    ax.set_ylabel("utilisation (% of measured fp32 matmul peak)")
    ax.set_title(f"LaCT op utilisation vs chunk size (T={T}, CPU fp32)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    plot = ctx.save_figure(fig, "lact_utilization.png")

    metrics = [
        Metric(f"utilisation C={c} D=256 fwd", [util(256, c)], unit="% peak") for c in CHUNKS
    ]
    metrics.append(
        Metric(
            "utilisation ratio C=2048 / C=16", [ratio], paper="orders of magnitude (GPU)", unit="x"
        )
    )
    verdict = _verdict(ratio)
    upto = [util(256, c) for c in CHUNKS if c <= 2048]
    rising = all(b >= 0.9 * a for a, b in itertools.pairwise(upto))
    summary = (
        f"On this CPU the fast path reaches {util(256, 2048):.0f}% of the measured matmul peak at "
        f"C=2048 versus {util(256, 16):.1f}% at C=16, a {ratio:.1f}x gain "
        f"({'rising' if rising else 'not monotone'} from C=16 to 2048; C=4096: {util(256, 4096):.0f}%, "
        "where the chunk's activations no longer fit the CPU caches). The paper reports orders of "
        "magnitude on GPUs, where small matmuls leave tensor cores idle and per-step launch overhead "
        "dominates; a CPU core runs small matmuls comparatively well, so the gain is smaller here. "
        "Verdict rule: >=10x reproduced, >=2x partly, else not reproduced."
    )
    return ExperimentResult(
        metrics=metrics,
        verdict=verdict,  # type: ignore[arg-type]
        summary=summary,
        plots=[plot],
        tables=[format_table(rows, ["D", "C", "pass", "seconds", "GFLOP/s", "% peak", "tokens/s"])],
        setting=(
            f"chunk_lact fp32 on CPU, B=1, H=1, T={T}, Dh=D, D in {list(dims)}, C in {list(CHUNKS)}, "
            f"{'forward' if ctx.quick else 'forward and forward+backward'}; FLOPs 18*D*Dh per token "
            "per head (x3 with backward); peak = matmul_peak_gflops(batch 8, size 512 for D=256), best "
            "of before/after the sweep"
        ),
        data={"rows": rows, "peaks": {str(k): v for k, v in peaks.items()}},
    )
