"""LaCT LM benchmarks: constant-memory decoding and training throughput.

* ``lact-decode``: time and cache memory per generated token vs context length, LaCT (fast
  weights + sliding-window buffer) vs full attention with a KV cache. LaCT must be flat.
* ``lact-train``: training tokens/s (forward + backward + AdamW) of LaCT (Muon / momentum),
  SWA-only and full attention, parameter-matched, at three context lengths; each ratio is the
  median of 3 interleaved runs with its min and max. ``--profile``: where the time of one
  training step goes, per component (embedding, projections, TTT preparation, the op forward
  and backward, attention, MLP, norms, loss, optimizer), for LaCT, SWA and full attention.

Run: ``batchcraft bench lact-decode lact-train`` (``--quick`` for a fast look,
``batchcraft bench lact-train --profile``) or
``python -m batchcraft.benchmarks.bench_lact_lm [--profile]``.
"""

from __future__ import annotations

import functools
import os
import statistics
from dataclasses import replace
from typing import Any

import torch

from batchcraft.models.lact_config import LaCTConfig, lact_tiny
from batchcraft.models.lact_lm import (
    LaCTForCausalLM,
    LMCache,
    count_parameters,
    full_attention_baseline,
    swa_baseline,
    ttt_linear_baseline,
)
from batchcraft.ops.lact.profile import component_profile, prof_range
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import (
    copy_bandwidth_gbs,
    matmul_peak_gflops,
    print_table,
    timeit,
    write_result,
)


def _bench_cfg(chunk: int) -> LaCTConfig:
    return lact_tiny(chunk_size=chunk, window_size=chunk)


def _check_decode(model: LaCTForCausalLM, t: int) -> float:
    """Correctness gate: token-by-token logits with the cache equal the one-shot forward."""
    ids = torch.randint(0, 256, (1, t), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, : t // 2], use_cache=True)
        logits, cache = [out.logits], out.cache
        for i in range(t // 2, t):
            out = model(ids[:, i : i + 1], cache=cache)
            logits.append(out.logits)
            cache = out.cache
    got = torch.cat(logits, 1)
    return float((got - full).norm() / full.norm())


@torch.no_grad()
def _prefill(model: LaCTForCausalLM, length: int, piece: int) -> LMCache:
    """Stream ``length`` random tokens through the model in pieces (bounded activation memory)."""
    g = torch.Generator().manual_seed(1)
    cache = None
    done = 0
    while done < length:
        m = min(piece, length - done)
        ids = torch.randint(0, 256, (1, m), generator=g)
        out = model(ids, cache=cache, use_cache=True)
        cache = out.cache
        done += m
    assert cache is not None
    return cache


@torch.no_grad()
def _decode_once(model: LaCTForCausalLM, cache: LMCache) -> None:
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def _train_once(model: LaCTForCausalLM, opt: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    logits = model(batch[:, :-1]).logits  # [1, T, V]
    with prof_range("loss"):
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:])
    with prof_range("zero_grad"):
        opt.zero_grad(set_to_none=True)
    loss.backward()
    with prof_range("optimizer"):
        opt.step()


def _spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of per-run values."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


@register_benchmark(
    "lact-decode",
    description="ms and cache bytes per generated token vs context: LaCT flat, full attention grows",
)
def decode(quick: bool = False) -> dict[str, Any]:
    contexts = [512, 2048] if quick else [1024, 4096, 16384, 65536]  # issue: 1K to 64K
    n_tokens = 4 if quick else 8  # per round; the best of 3 interleaved rounds is kept
    chunk = 256
    models = {
        "lact": _bench_cfg(chunk),
        "full_attention": full_attention_baseline(_bench_cfg(chunk)),
    }
    copy_gbs = copy_bandwidth_gbs()
    rows: list[dict[str, Any]] = []
    gate = {}
    for name, cfg in models.items():
        torch.manual_seed(0)
        model = LaCTForCausalLM(
            replace(cfg, chunk_size=8, window_size=8) if name == "lact" else cfg
        )
        gate[name] = _check_decode(model.eval(), 40)
        if gate[name] > 1e-5:
            raise RuntimeError(f"decode != prefill for {name}: rel err {gate[name]:.2e}")
        torch.manual_seed(0)
        model = LaCTForCausalLM(cfg).eval()
        caches = {n: _prefill(model, n, piece=1024) for n in contexts}
        best = dict.fromkeys(contexts, float("inf"))
        for _ in range(3):  # interleave contexts so load changes hit all of them alike
            for ctx_len in contexts:
                step = functools.partial(_decode_once, model, caches[ctx_len])  # same prefix
                t = timeit(step, warmup=1, repeat=n_tokens)
                best[ctx_len] = min(best[ctx_len], t["min_s"])
        for ctx_len in contexts:
            nbytes = caches[ctx_len].nbytes()
            rows.append(
                {
                    "model": name,
                    "context": ctx_len,
                    "ms_per_token": 1e3 * best[ctx_len],
                    "cache_MB": nbytes / 2**20,
                    "cache_GB/s_vs_copy": nbytes / best[ctx_len] / 1e9 / copy_gbs,
                }
            )
    for name in models:
        r = [x for x in rows if x["model"] == name]
        r[-1]["time_ratio_max/min_ctx"] = r[-1]["ms_per_token"] / r[0]["ms_per_token"]
        r[-1]["mem_ratio_max/min_ctx"] = r[-1]["cache_MB"] / r[0]["cache_MB"]
    print_table(rows, title="lact-decode (batch 1, tiny d=128, 2 layers, C = W = 256)")
    res = {
        "rows": rows,
        "gate_rel_err": gate,
        "copy_GBps": copy_gbs,
        "threads": torch.get_num_threads(),
        "quick": quick,
    }
    write_result("lact-decode", res)
    return res


def _train_models(base: LaCTConfig) -> dict[str, LaCTConfig]:
    return {
        "lact_muon": replace(base, use_muon=True),
        "lact_momentum": base,
        "swa": swa_baseline(base),
        "full_attention": full_attention_baseline(base),
        "ttt_linear_mb16": ttt_linear_baseline(base),
    }


def _train_gate(base: LaCTConfig) -> float:
    """Correctness gate: the fast op path equals the reference on a LaCT forward/backward."""
    torch.manual_seed(0)
    small = replace(base, chunk_size=8, window_size=8, use_muon=True)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    outs = []
    for impl in ("naive", "chunk"):
        torch.manual_seed(0)
        m = LaCTForCausalLM(replace(small, lact_impl=impl)).double()
        loss = m(ids, labels=ids).loss
        assert loss is not None
        grads = torch.autograd.grad(loss, list(m.parameters()))
        outs.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
    gate = float((outs[0][1] - outs[1][1]).norm() / outs[0][1].norm())
    if gate > 1e-8 or not torch.allclose(outs[0][0], outs[1][0], rtol=1e-10):
        raise RuntimeError(f"chunk != naive on the LM gradients: rel err {gate:.2e}")
    return gate


def _build(cfg: LaCTConfig) -> tuple[LaCTForCausalLM, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = LaCTForCausalLM(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


@register_benchmark(
    "lact-train",
    description="training tokens/s of LaCT (Muon/momentum) vs SWA vs full attention, matched "
    "params (--profile: where one step's time goes, per component)",
)
def train(quick: bool = False, profile: bool = False) -> dict[str, Any]:
    """Training throughput, or with ``profile`` the per-component time of one step.

    Every model is timed in each of ``RUNS`` interleaved runs (so load changes hit all alike);
    each ratio (LaCT vs SWA, vs full attention) is computed per run and reported as the median
    of the runs with its min and max.
    """
    chunk = 256
    base = _bench_cfg(chunk)
    models = _train_models(base)
    gate = _train_gate(base)
    if profile:
        return _profile(models, t=512 if quick else 4096, quick=quick, gate=gate)
    lengths = [512] if quick else [1024, 4096, 16384]  # issue: T = 4K / 16K (1K for reference)
    runs = 3
    peak = matmul_peak_gflops()
    rows: list[dict[str, Any]] = []
    for t in lengths:
        built = {name: _build(cfg) for name, cfg in models.items()}
        batch = torch.randint(0, 256, (1, t + 1), generator=torch.Generator().manual_seed(2))
        steps = {
            name: functools.partial(_train_once, model, opt, batch)
            for name, (model, opt) in built.items()
        }
        for step in steps.values():  # warm-up (allocator, caches)
            step()
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(runs):
            for name, step in steps.items():
                times[name].append(timeit(step, warmup=0, repeat=1 if quick else 2).median)
        for name, cfg in models.items():
            n_params = count_parameters(cfg)
            med = statistics.median(times[name])
            row: dict[str, Any] = {
                "T": t,
                "model": name,
                "params_M": n_params / 1e6,
                "tokens_per_s": t / med,
                # dense-parameter FLOPs (attention/TTT maths excluded)
                "6ND_GFLOPs_frac_of_peak": 6.0 * n_params * t / med / 1e9 / peak,
            }
            for ref in ("swa", "full_attention"):
                sp = _spread([b / a for a, b in zip(times[name], times[ref], strict=True)])
                row[f"speed_vs_{ref}"] = sp["median"]
                row[f"speed_vs_{ref}_min"] = sp["min"]
                row[f"speed_vs_{ref}_max"] = sp["max"]
            rows.append(row)
        del built, steps
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_table(
        rows,
        title=f"lact-train (batch 1, tiny d=128, 2 layers, C = W = {chunk}; ratios: median "
        f"[min, max] of {runs} interleaved runs; threads={torch.get_num_threads()}, "
        f"load {load:.1f})",
    )
    res = {
        "rows": rows,
        "gate_rel_err": gate,
        "matmul_peak_GFLOPs": peak,
        "threads": torch.get_num_threads(),
        "load_avg_1min": load,
        "runs": runs,
        "quick": quick,
    }
    write_result("lact-train", res)
    return res


def _profile(models: dict[str, LaCTConfig], *, t: int, quick: bool, gate: float) -> dict[str, Any]:
    """Per-component time of one training step (forward ranges + backward by autograd node)."""
    names = ["lact_momentum", "lact_muon", "swa", "full_attention"]
    batch = torch.randint(0, 256, (1, t + 1), generator=torch.Generator().manual_seed(2))
    prof: dict[str, dict[str, Any]] = {}
    for name in names:
        model, opt = _build(models[name])
        prof[name] = component_profile(functools.partial(_train_once, model, opt, batch))
    components: list[str] = []
    for p in prof.values():
        components += [r["component"] for r in p["rows"] if r["component"] not in components]
    rows: list[dict[str, Any]] = []
    for c in components:
        row: dict[str, Any] = {"component": c}
        for name in names:
            r = next((x for x in prof[name]["rows"] if x["component"] == c), None)
            if name == "lact_momentum":  # forward / backward split of the model under study
                row["lact_momentum fwd ms"] = r["fwd_ms"] if r else 0.0
                row["lact_momentum bwd ms"] = r["bwd_ms"] if r else 0.0
            row[f"{name} ms"] = r["total_ms"] if r else 0.0
            row[f"{name} %"] = 100.0 * r["share"] if r else 0.0
        rows.append(row)
    total: dict[str, Any] = {"component": "step (profiled)"}
    for name in names:
        total[f"{name} ms"] = 1e3 * prof[name]["profiled_s"]
        total[f"{name} %"] = 100.0
    rows.append(total)
    rows.append(
        {"component": "step (unprofiled)", **{f"{n} ms": 1e3 * prof[n]["wall_s"] for n in names}}
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print_table(
        rows,
        title=f"lact-train --profile: one training step at T={t} (batch 1, tiny d=128, 2 layers, "
        f"C = W = 256; threads={torch.get_num_threads()}, load {load:.1f}); backward time is "
        "charged to the component whose forward created each autograd node",
    )
    res = {
        "rows": rows,
        "T": t,
        "gate_rel_err": gate,
        "threads": torch.get_num_threads(),
        "load_avg_1min": load,
        "quick": quick,
        "raw": {n: p["rows"] for n, p in prof.items()},
    }
    write_result("lact-train-profile", res)
    return res


if __name__ == "__main__":
    import sys

    if "--profile" in sys.argv:
        train(quick="--quick" in sys.argv, profile=True)
    else:
        decode(quick="--quick" in sys.argv)
        train(quick="--quick" in sys.argv)
