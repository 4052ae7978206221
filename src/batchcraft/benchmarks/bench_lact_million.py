"""Benchmark ``lact-million``: one bidirectional LaCT op over N = 2^14 .. 2^20 tokens on CPU.

Run: ``batchcraft bench lact-million`` (add ``--quick``: N up to 2^17) or
``python -m batchcraft.benchmarks.bench_lact_million [--quick]``.

Correctness gate first: the streaming update (inner gradient accumulated chunk by chunk, Muon and
the row renorm once on the sum) equals the one-shot ``lact(..., schedule="bidirectional")`` in
fp64. Then, fp32, D = Dh = 256, one head, classic Muon (5 steps), no grad:

* ``streaming``: update over all N tokens in chunks of 8192, then apply to all N tokens (inputs
  are a pool of 4 random chunks reused cyclically, so memory is what the op itself needs);
* ``one-shot``: the same maths through ``lact(..., schedule="bidirectional")`` on materialised
  [1, N, 1, 256] inputs, while it stays under a memory/time cap;
* ``sdpa``: non-causal full softmax attention (``scaled_dot_product_attention``) over the same N,
  head 256, while its predicted time stays under a cap (it is quadratic).

Peak memory is the inputs (analytic) plus the peak resident-set growth during the call, sampled every 2 ms from
``/proc/self/statm`` (Linux). GFLOP/s counts 18*D*Dh per token for LaCT and 4*N^2*D for SDPA;
"% peak" is relative to :func:`batchcraft.utils.bench.matmul_peak_gflops` measured in the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from batchcraft.ops.lact import FastWeights, lact, lact_flops
from batchcraft.ops.lact.streaming import streaming_apply, streaming_bidirectional, streaming_update
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import PeakRSS, matmul_peak_gflops, print_table, write_result

D = 256
CHUNK = 8192
POOL = 4


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak RSS growth in MiB) of one call of ``fn``."""
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt, max(0, rss.peak) / 2**20


def _weights(g: torch.Generator) -> FastWeights:
    s = D**-0.5
    return FastWeights(*(torch.randn(1, D, D, generator=g) * s for _ in range(3)))


def _pool(g: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for _ in range(POOL):
        q, k, v = (F.normalize(torch.randn(1, CHUNK, 1, D, generator=g), dim=-1) for _ in range(3))
        lr = torch.full((1, CHUNK, 1, 3), 1e-2)
        out.append((q, k, v, lr))
    return out


def correctness_gate() -> float:
    """fp64 streaming (chunks of 7) vs one-shot reference on N = 61 tokens; max abs error."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 61, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(2, 61, 2, 3, generator=g, dtype=torch.float64) * 0.1
    w0 = FastWeights(
        *(torch.randn(2, 16, 16, generator=g, dtype=torch.float64) / 4 for _ in range(3))
    )
    o_ref, st = lact(
        q, k, v, lr, w0, chunk_size=61, schedule="bidirectional", muon="classic", impl="naive"
    )
    o, w = streaming_bidirectional(q, k, v, lr, w0, chunk_size=7, muon="classic")
    err = max(
        float((o - o_ref).abs().max()),
        *(float((a - b).abs().max()) for a, b in zip(w, st.weights, strict=True)),
    )
    if err > 1e-9:
        raise RuntimeError(f"streaming != one-shot (max abs err {err:.2e})")
    return err


def _mib(*ts: torch.Tensor) -> float:
    return sum(t.numel() * t.element_size() for t in ts) / 2**20


def _oneshot(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, w0: FastWeights
) -> None:
    n = q.shape[1]
    lact(q, k, v, lr, w0, chunk_size=n, schedule="bidirectional", muon="classic")


def _stream(n: int, pool: list[tuple[torch.Tensor, ...]], w0: FastWeights) -> None:
    def chunks() -> Iterator[tuple[torch.Tensor, ...]]:
        for i, s in enumerate(range(0, n, CHUNK)):
            _, k, v, lr = pool[i % POOL]
            e = min(CHUNK, n - s)
            yield k[:, :e], v[:, :e], lr[:, :e]

    w = streaming_update(chunks(), w0, muon="classic")
    qs = (pool[i % POOL][0][:, : min(CHUNK, n - s)] for i, s in enumerate(range(0, n, CHUNK)))
    for _ in streaming_apply(w, qs):
        pass  # outputs are consumed chunk by chunk (written out in a real pipeline)


@register_benchmark("lact-million", description="bidirectional LaCT over 16K..1M tokens vs SDPA")
def main(quick: bool = False) -> dict[str, Any]:
    """Time and peak memory of one bidirectional LaCT op vs full attention over N tokens."""
    err = correctness_gate()
    print(f"correctness gate: streaming == one-shot (fp64 max abs err {err:.1e})")
    torch.set_grad_enabled(False)
    peak = matmul_peak_gflops(size=512)
    g = torch.Generator().manual_seed(1)
    pool, w0 = _pool(g), _weights(g)
    pool_mib = sum(_mib(*c) for c in pool)
    max_log = 17 if quick else 20
    oneshot_cap, sdpa_cap = (2**16, 4.0) if quick else (2**17, 15.0)
    rows: list[dict[str, Any]] = []
    sdpa_prev: float | None = None
    for lg in range(14, max_log + 1):
        n = 2**lg
        fl = lact_flops(n, 1, D, D)
        t, mem = measure(lambda n=n: _stream(n, pool, w0))
        row: dict[str, Any] = {
            "N": n,
            "streaming s": round(t, 3),
            "streaming MiB": round(mem + pool_mib, 1),
            "Mtok/s": round(n / t / 1e6, 3),
            "% peak": round(100 * fl / t / 1e9 / peak, 1),
        }
        if n <= oneshot_cap:
            q, k, v = (F.normalize(torch.randn(1, n, 1, D, generator=g), dim=-1) for _ in range(3))
            lr = torch.full((1, n, 1, 3), 1e-2)
            t1, m1 = measure(partial(_oneshot, q, k, v, lr, w0))
            row["one-shot s"] = round(t1, 3)
            row["one-shot MiB"] = round(m1 + _mib(q, k, v, lr), 1)
            del q, k, v, lr
        pred = None if sdpa_prev is None else sdpa_prev * 4
        if pred is None or pred < sdpa_cap:
            qa = torch.randn(1, 1, n, D, generator=g)
            ts, ms = measure(lambda qa=qa: F.scaled_dot_product_attention(qa, qa, qa))
            sdpa_prev = ts
            row["sdpa s"], row["sdpa MiB"] = round(ts, 3), round(ms + 3 * _mib(qa), 1)
            row["sdpa / streaming"] = round(ts / t, 2)
            row["sdpa % peak"] = round(100 * 4 * n * n * D / ts / 1e9 / peak, 1)
            del qa
        else:
            row["sdpa s"] = f"skipped (predicted {pred:.0f} s > cap {sdpa_cap:.0f} s)"
        rows.append(row)
        print(f"N = {n}: {row}", flush=True)
    torch.set_grad_enabled(True)
    print_table(rows)
    out = {
        "rows": rows,
        "correctness_max_abs_err": err,
        "matmul_peak_gflops": peak,
        "D": D,
        "chunk": CHUNK,
        "quick": quick,
    }
    write_result("lact-million", out)
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
