"""Benchmark ``lact-scale``: sharded training memory and chunk-parallel LaCT, on CPU ranks (gloo).

Run: ``batchcraft bench lact-scale`` (``--quick``: tiny preset only, 16K tokens) or
``python -m batchcraft.benchmarks.bench_lact_scale [--quick]``. The ranks are ``torchrun`` processes
launched by this script (``--worker`` modes below), CPU and gloo, so every figure is a CPU figure.

1. **Per-rank memory, fsdp vs ddp at 2 ranks** (tiny and small presets, AdamW, one sequence of
   128 tokens per rank): exact bytes of the parameters, gradients and optimizer state each rank
   holds after one real training step (FSDP2: local shards), and the bytes autograd saves in the
   forward, measured side by side in the same 2 processes; next to them the planner's figures
   (``batchcraft lm plan``, CPU target) and the ratios fsdp / ddp (expected ~1/2 for parameters,
   gradients and optimizer state, 1 for activations).
2. **Chunk-parallel LaCT**: one bidirectional update (update on all tokens, then apply to all)
   over N = 64K tokens (one head, D = Dh = 256, classic Muon 5 steps, fp32) on 1 rank (2 threads)
   vs 2 ranks (1 thread each, N / 2 tokens each, one all-reduce of ``3*D*Dh`` floats): time of
   the forward without a graph and of forward + backward, bytes autograd saves per rank, the
   inputs per rank, and the peak resident-set growth during forward + backward. Correctness gate
   first: the 2-rank op equals the 1-process op on the same tokens (fp64). Median of 3 runs
   (interleaved 1-rank, 2-rank, ...) with min and max.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import PeakRSS, print_table, write_result

D = 256
PRESETS_FULL = ("tiny", "small")
MEM_CONTEXT = 128


# ------------------------------------------------------------------ helpers
def _launch(world: int, args: list[str], threads: int) -> None:
    """Run this script's worker mode on ``world`` torchrun ranks (a plain process for 1)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    module = "batchcraft.benchmarks.bench_lact_scale"  # run as a module: works from a wheel too
    if world == 1:
        cmd = [sys.executable, "-m", module, "--worker", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
               "--master-port", str(port), "-m", module, "--worker", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    # the ranks import this same copy of batchcraft (the folder that holds the package)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


# ------------------------------------------------------------------ worker modes (in the ranks)
def _init() -> tuple[int, int]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
        return dist.get_rank(), world
    return 0, 1


def _worker_memory(out: Path, presets: list[str]) -> None:
    from batchcraft.models.lact_config import get_preset
    from batchcraft.recipes.memory import measure_step_memory

    rank, _ = _init()
    torch.set_num_threads(1)
    res = {
        f"{p}/{par}": measure_step_memory(get_preset(p), parallel=par, context=MEM_CONTEXT)
        for p in presets
        for par in ("ddp", "fsdp")
    }
    (out.parent / f"{out.name}.rank{rank}").write_text(json.dumps(res))


def _inputs(n: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        F.normalize(torch.randn(1, n, 1, D, generator=g, dtype=dtype), dim=-1) for _ in "qkv"
    )
    lr = torch.rand(1, n, 1, 3, generator=g, dtype=dtype) * 1e-2
    return q, k, v, lr


def _w0(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return [torch.randn(1, D, D, generator=g, dtype=dtype) * D**-0.5 for _ in range(3)]


def _bidir(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor, w0: list, group):
    from batchcraft.ops.lact import FastWeights, lact

    return lact(q, k, v, lr, FastWeights(*w0), schedule="bidirectional", muon="classic",
                impl="chunk", group=group)[0]  # fmt: skip


def _gate(rank: int, world: int, group: Any) -> float:
    """fp64: this rank's slice through the chunk-parallel op == the one-process op."""
    n = 96
    q, k, v, lr = _inputs(n, torch.float64, 3)
    w0 = _w0(torch.float64)
    ref = _bidir(q, k, v, lr, w0, None)
    sl = slice(rank * n // world, (rank + 1) * n // world)
    got = _bidir(q[:, sl], k[:, sl], v[:, sl], lr[:, sl], w0, group)
    return float((got - ref[:, sl]).abs().max())


def _worker_cp(out: Path, n_total: int) -> None:
    from batchcraft.recipes.memory import SavedBytes

    rank, world = _init()
    group = None
    if world > 1:
        import torch.distributed as dist

        group = dist.group.WORLD
    err = _gate(rank, world, group) if world > 1 else 0.0
    n = n_total // world
    q, k, v, lr = _inputs(n_total, torch.float32, 1)
    sl = slice(rank * n, (rank + 1) * n)
    q, k, v, lr = (t[:, sl].contiguous() for t in (q, k, v, lr))
    w0 = _w0(torch.float32)

    def barrier() -> None:
        if group is not None:
            import torch.distributed as dist

            dist.barrier()

    with torch.no_grad():  # warm-up (allocator, thread pool)
        _bidir(q[:, :1024], k[:, :1024], v[:, :1024], lr[:, :1024], w0, group)
    barrier()
    t0 = time.perf_counter()
    with torch.no_grad():
        _bidir(q, k, v, lr, w0, group)
    t_fwd = time.perf_counter() - t0
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, lr, *w0)]
    saved = SavedBytes(exclude=leaves)
    barrier()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        with saved.saved_by_autograd():
            o = _bidir(*leaves[:4], leaves[4:], group)  # type: ignore[call-arg]  # 4 + w0 + group
        o.square().sum().backward()
        t_fb = time.perf_counter() - t0
    res = {
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_fb,
        "saved_mib": saved.total / 2**20,
        "inputs_mib": sum(t.numel() * t.element_size() for t in (q, k, v, lr)) / 2**20,
        "peak_rss_mib": rss.peak / 2**20,
        "gate_err": err,
    }
    (out.parent / f"{out.name}.rank{rank}").write_text(json.dumps(res))


# ------------------------------------------------------------------ the benchmark
def _read(out: Path, world: int) -> list[dict[str, Any]]:
    return [json.loads((out.parent / f"{out.name}.rank{r}").read_text()) for r in range(world)]


def _memory_rows(tmp: Path, presets: list[str]) -> list[dict[str, Any]]:
    from batchcraft.recipes.plan import plan_memory

    out = tmp / "memory"
    _launch(2, ["memory", str(out), ",".join(presets)], threads=1)
    ranks = _read(out, 2)
    rows = []
    mib = 2**20
    for p in presets:
        rows_p = plan_memory(p, context=MEM_CONTEXT, gpus=2, gpu_mem_gib=80, cp=[1], target="cpu")
        plan = {r.parallel: r for r in rows_p if not r.checkpointing}
        m = {par: ranks[0][f"{p}/{par}"] for par in ("ddp", "fsdp")}
        for par in ("ddp", "fsdp"):
            got = m[par]
            state = got["params"] + got["grads"] + got["optimizer"]
            pr = plan[par]
            rows.append({
                "preset": p,
                "parallel": par,
                "params MiB": round(got["params"] / mib, 3),
                "grads MiB": round(got["grads"] / mib, 3),
                "optim MiB": round(got["optimizer"] / mib, 3),
                "activ MiB": round(got["activations"] / mib, 3),
                "state MiB": round(state / mib, 3),
                "state fsdp/ddp": round(
                    state / sum(m["ddp"][x] for x in ("params", "grads", "optimizer")), 4
                ),
                "params+optim fsdp/ddp": round(
                    (got["params"] + got["optimizer"])
                    / (m["ddp"]["params"] + m["ddp"]["optimizer"]),
                    4,
                ),
                "plan/measured state": round(
                    (pr.params + pr.grads + pr.optimizer) / state, 4
                ),
                "plan/measured activ": round(pr.activations / got["activations"], 4),
                "ranks agree": all(r[f"{p}/{par}"] == got for r in ranks),
            })  # fmt: skip
    return rows


def _cp_rows(tmp: Path, n: int, repeats: int) -> tuple[list[dict[str, Any]], float]:
    runs: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
    for i in range(repeats):  # interleaved: 1 rank, 2 ranks, 1 rank, ...
        for world in (1, 2):
            out = tmp / f"cp{world}_{i}"
            _launch(world, ["cp", str(out), str(n)], threads=2 // world)
            runs[world].append(_read(out, world))
    gate = max(r["gate_err"] for rep in runs[2] for r in rep)
    rows = []
    base: dict[str, float] = {}
    for world in (1, 2):

        def stat(key: str, world: int = world) -> tuple[float, float, float]:
            per_run = [max(r[key] for r in rep) for rep in runs[world]]  # the slowest rank
            return statistics.median(per_run), min(per_run), max(per_run)

        fwd, fb = stat("fwd_s"), stat("fwd_bwd_s")
        rep0 = runs[world][0][0]
        row = {
            "ranks": world,
            "tokens/rank": n // world,
            "fwd s (med)": round(fwd[0], 3),
            "fwd s min-max": f"{fwd[1]:.3f}-{fwd[2]:.3f}",
            "fwd+bwd s (med)": round(fb[0], 3),
            "fwd+bwd s min-max": f"{fb[1]:.3f}-{fb[2]:.3f}",
            "saved MiB/rank": round(rep0["saved_mib"], 1),
            "inputs MiB/rank": round(rep0["inputs_mib"], 1),
            "peak RSS MiB/rank (med)": round(stat("peak_rss_mib")[0], 1),
            "all-reduce floats/update": 0 if world == 1 else 3 * D * D,
        }
        if world == 1:
            base = {"fwd": fwd[0], "fb": fb[0], "saved": rep0["saved_mib"]}
        else:
            row["fwd speed-up x"] = round(base["fwd"] / fwd[0], 2)
            row["fwd+bwd speed-up x"] = round(base["fb"] / fb[0], 2)
            row["saved ratio 2/1"] = round(rep0["saved_mib"] / base["saved"], 3)
        rows.append(row)
    return rows, gate


@register_benchmark(
    "lact-scale",
    description="per-rank memory fsdp vs ddp (2 ranks); chunk-parallel 64K-token update, 2 vs 1",
)
def main(quick: bool = False) -> dict[str, Any]:
    """Run both parts on CPU gloo ranks; print the tables, write lact-scale.json (results_dir())."""
    presets = ["tiny"] if quick else list(PRESETS_FULL)
    n = 2**14 if quick else 2**16
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mem = _memory_rows(tmp, presets)
        print_table(mem, title="per-rank memory after one step, 2 CPU ranks (exact bytes)")
        cp, gate = _cp_rows(tmp, n, repeats=3)
    if gate > 1e-9:
        raise RuntimeError(f"chunk-parallel op != one process (max abs err {gate:.1e})")
    print(f"correctness gate: 2-rank op == 1-process op (fp64 max abs err {gate:.1e})")
    print_table(
        cp,
        title=f"one bidirectional update over {n} tokens, 1 vs 2 CPU ranks (median of 3)",
    )
    out = {
        "rows": mem + cp,
        "memory": mem,
        "chunk_parallel": cp,
        "gate_max_abs_err": gate,
        "tokens": n,
        "D": D,
        "note": "CPU gloo ranks on a shared machine; 1 rank uses 2 threads, 2 ranks 1 each",
        "quick": quick,
    }
    write_result("lact-scale", out)
    return out


if __name__ == "__main__":
    if "--worker" in sys.argv:
        mode, out_path, arg = sys.argv[sys.argv.index("--worker") + 1 :][:3]
        if mode == "memory":
            _worker_memory(Path(out_path), arg.split(","))
        else:
            _worker_cp(Path(out_path), int(arg))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    else:
        main(quick="--quick" in sys.argv)
