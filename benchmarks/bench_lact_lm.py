"""LaCT LM benchmarks: constant-memory decoding and training throughput.

* ``lact-decode``: time and cache memory per generated token vs context length, LaCT (fast
  weights + sliding-window buffer) vs full attention with a KV cache. LaCT must be flat.
* ``lact-train``: training tokens/s (forward + backward + AdamW) of LaCT (Muon / momentum),
  SWA-only and full attention, parameter-matched, at two context lengths.

Run: ``batchcraft bench lact-decode lact-train`` (``--quick`` for a fast look) or
``python benchmarks/bench_lact_lm.py``.
"""

from __future__ import annotations

import functools
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
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


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


@register_benchmark(
    "lact-train",
    description="training tokens/s of LaCT (Muon/momentum) vs SWA vs full attention, matched params",
)
def train(quick: bool = False) -> dict[str, Any]:
    lengths = [512] if quick else [1024, 4096, 16384]  # issue: T = 4K / 16K (1K for reference)
    chunk = 256
    base = _bench_cfg(chunk)
    models = {
        "lact_muon": replace(base, use_muon=True),
        "lact_momentum": base,
        "swa": swa_baseline(base),
        "full_attention": full_attention_baseline(base),
        "ttt_linear_mb16": ttt_linear_baseline(base),
    }
    # correctness gate: the fast op path equals the reference on a LaCT forward/backward
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

    peak = matmul_peak_gflops()
    rows: list[dict[str, Any]] = []
    for t in lengths:
        for name, cfg in models.items():
            torch.manual_seed(0)
            model = LaCTForCausalLM(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            batch = torch.randint(0, 256, (1, t + 1), generator=torch.Generator().manual_seed(2))

            step = functools.partial(_train_once, model, opt, batch)
            tm = timeit(step, warmup=1, repeat=2 if quick else 3)
            n_params = count_parameters(cfg)
            flops = 6.0 * n_params * t  # dense-parameter FLOPs (attention/TTT maths excluded)
            rows.append(
                {
                    "T": t,
                    "model": name,
                    "params_M": n_params / 1e6,
                    "tokens_per_s": t / tm.median,
                    "6ND_GFLOPs_frac_of_peak": flops / tm.median / 1e9 / peak,
                }
            )
        full = next(r for r in rows if r["T"] == t and r["model"] == "full_attention")
        for r in rows:
            if r["T"] == t:
                r["speed_vs_full"] = r["tokens_per_s"] / full["tokens_per_s"]
    print_table(rows, title="lact-train (batch 1, tiny d=128, 2 layers, C = W = 256)")
    res = {
        "rows": rows,
        "gate_rel_err": gate,
        "matmul_peak_GFLOPs": peak,
        "threads": torch.get_num_threads(),
        "quick": quick,
    }
    write_result("lact-train", res)
    return res


if __name__ == "__main__":
    decode()
    train()
