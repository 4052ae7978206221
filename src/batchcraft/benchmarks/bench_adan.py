"""Adan step time and memory traffic vs torch AdamW and pytorch-optimizer's Adan.

Reports ms/step, the achieved GB/s for the minimal traffic (Adan 44 B/param: read theta, g, m,
v, n, g_prev, write theta, m, v, n, g_prev; AdamW 28 B/param), that figure as a % of the copy
bandwidth measured in the same run (``dst.copy_(src)`` into a preallocated tensor), and each
step time as a ratio to torch ``AdamW(fused=True)``: the median, min and max over 3 runs, each
run a median of steps interleaved across providers so that the machine's load hits them alike.
Physics floor: Adan / fused AdamW >= 44/28 = 1.57. The "many tensors" set is the flat set's size
in 2048 tensors, so its time over the flat set's is the cost of the number of tensors.
Correctness gate first: golden case A (the official implementation's fp64 trajectory, as in
``tests/optim/test_adan.py``) on every Adan provider, then our paths agree with the
single-tensor reference on the benchmark's own first parameter set.

    python -m batchcraft.benchmarks.bench_adan [--quick]      # or: batchcraft bench adan
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from batchcraft.optim import Adan
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import copy_bandwidth_gbs, print_table, write_result

ADAN_BYTES, ADAMW_BYTES = 44, 28
GOLDEN_A5 = [0.507386782997, -1.501873365013]  # x after 5 steps of case A (lr 0.1)


def resnet50_like(width: int = 64) -> list[tuple[int, ...]]:
    """161 tensors shaped like ResNet-50 (25.6M params at ``width=64``)."""
    shapes: list[tuple[int, ...]] = [(width, 3, 7, 7), (width,), (width,)]
    cin = width
    for stage, blocks in enumerate([3, 4, 6, 3]):
        w = width * 2**stage
        for b in range(blocks):
            shapes += [(w, cin, 1, 1), (w,), (w,), (w, w, 3, 3), (w,), (w,)]
            shapes += [(4 * w, w, 1, 1), (4 * w,), (4 * w,)]
            if b == 0:
                shapes += [(4 * w, cin, 1, 1), (4 * w,), (4 * w,)]
            cin = 4 * w
    return [*shapes, (1000, cin), (1000,)]


def gpt2_like(d: int = 512, layers: int = 12, vocab: int = 50257) -> list[tuple[int, ...]]:
    """GPT-2-shaped tensors: embeddings, per layer ln/attn/ln/mlp, final ln (~150 tensors)."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (1024, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return [*shapes, (d,), (d,)]


def _providers(device: torch.device) -> dict[str, tuple[Callable[..., Any], dict[str, Any], int]]:
    prov: dict[str, tuple[Callable[..., Any], dict[str, Any], int]] = {
        "adan single": (Adan, dict(foreach=False), ADAN_BYTES),
        "adan foreach": (Adan, dict(foreach=True), ADAN_BYTES),
        "adan fused": (Adan, dict(fused=True), ADAN_BYTES),
        "AdamW foreach": (torch.optim.AdamW, dict(foreach=True), ADAMW_BYTES),
        "AdamW fused": (torch.optim.AdamW, dict(fused=True), ADAMW_BYTES),
    }
    try:
        import pytorch_optimizer as po

        prov["pytorch-optimizer Adan"] = (po.Adan, dict(foreach=device.type == "cuda"), ADAN_BYTES)
    except ImportError:
        pass
    return prov


def _gate(device: torch.device) -> list[str]:
    """Golden case A on each Adan provider (fp32; fp64 where the path supports it)."""
    checked = []
    a = torch.tensor([2.0, 0.5], device=device)
    for name, (cls, kw, _) in _providers(device).items():
        if not name.lower().endswith("adan") and not name.startswith("adan"):
            continue
        dtype = torch.float32 if "fused" in name else torch.float64
        x = torch.tensor([1.0, -2.0], dtype=dtype, device=device, requires_grad=True)
        opt = cls([x], lr=0.1, **kw)
        for _ in range(5):
            x.grad = a.to(dtype) * x.detach()
            opt.step()
        err = (x.detach().double().cpu() - torch.tensor(GOLDEN_A5, dtype=torch.float64)).abs().max()
        tol = 1e-6 if dtype == torch.float32 else 1e-11
        if float(err) > tol:
            raise AssertionError(f"{name}: golden case A off by {float(err):.3g} (> {tol})")
        checked.append(name)
    return checked


def _agree_on(shapes: list[tuple[int, ...]], device: torch.device) -> float:
    """Max relative difference of foreach/fused vs single-tensor after 2 steps on ``shapes``."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen).to(device) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device) * 0.01 for s in shapes] for _ in range(2)]
    out = []
    for kw in (dict(foreach=False), dict(foreach=True), dict(fused=True)):
        ps = [b.clone().requires_grad_() for b in base]
        opt = Adan(ps, lr=1e-3, weight_decay=0.02, max_grad_norm=1.0, **kw)
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = g
            opt.step()
        out.append(torch.cat([p.detach().flatten() for p in ps]))
    worst = max(float(((o - out[0]).abs() / (out[0].abs() + 1e-3)).max()) for o in out[1:])
    if worst > 1e-4:
        raise AssertionError(f"our Adan paths disagree on the benchmark inputs: {worst:.3g}")
    return worst


def _time_set(label: str, shapes: list[tuple[int, ...]], device: torch.device, copy_gbs: float,
              runs: int, repeat: int) -> list[dict[str, Any]]:  # fmt: skip
    """Every provider side by side, interleaved step by step, in ``runs`` runs of ``repeat`` rounds.

    All providers update the same parameters with the same gradients (timing only), so the
    machine's load at any moment hits them alike. Each run gives a median per provider and a
    ratio to AdamW(fused) from those medians; the row reports the median, min and max over runs.
    """
    numel = sum(int(torch.Size(s).numel()) for s in shapes)
    gen = torch.Generator().manual_seed(1)
    params = [torch.zeros(s, device=device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 0.01).to(device)
    provs = {
        name: (cls(params, lr=1e-4, **kw), nbytes)
        for name, (cls, kw, nbytes) in _providers(device).items()
        if not ("AdamW fused" in name and device.type == "cpu" and not _has_cpu_fused())
    }
    for opt, _ in provs.values():  # warm-up: state allocation, kernel build / compile
        for _ in range(2):
            opt.step()
    medians: dict[str, list[float]] = {name: [] for name in provs}
    for _ in range(runs):
        times: dict[str, list[float]] = {name: [] for name in provs}
        for _ in range(repeat):
            for name, (opt, _) in provs.items():
                times[name].append(_time_one(opt.step, device))
        for name in provs:
            medians[name].append(statistics.median(times[name]))
    del provs, params
    ref = medians.get("AdamW fused")
    rows: list[dict[str, Any]] = []
    for name, (_, _, nbytes) in _providers(device).items():
        if name not in medians:
            continue
        t = statistics.median(medians[name])
        ratios = [a / b for a, b in zip(medians[name], ref, strict=True)] if ref else [math.nan]
        gbs = nbytes * numel / t / 1e9
        rows.append({"set": label, "tensors": len(shapes), "params (M)": numel / 1e6,
                     "provider": name, "ms/step": t * 1e3, "GB/s": gbs,
                     "% copy bw": 100 * gbs / copy_gbs,
                     "x AdamW fused": statistics.median(ratios),
                     "x AdamW fused min": min(ratios), "x AdamW fused max": max(ratios)})  # fmt: skip
    return rows


def _time_one(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _has_cpu_fused() -> bool:
    try:
        p = torch.zeros(2, requires_grad=True)
        p.grad = torch.zeros(2)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except RuntimeError:
        return False


@register_benchmark(
    "adan", description="Adan ms/step and GB/s vs copy bandwidth, vs AdamW and peers"
)
def main(quick: bool = False) -> dict[str, Any]:
    """Time every provider on the parameter sets; print and save the table."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gated = _gate(device)
    s = 8 if quick else 1
    flat = 2**25 // s**2 if device.type == "cpu" else 2**28 // s**2
    sets = {
        "ResNet-50-like": resnet50_like(64 // s),
        "GPT-2-like": gpt2_like(512 // s, 12, 50257 // s),
        "flat": [(flat,)],
        "many tensors": [(flat // 2048,)] * 2048,  # the flat set's size in 2048 tensors
    }
    agree = _agree_on(sets["ResNet-50-like"][:40], device)
    copy_gbs = copy_bandwidth_gbs(numel=2**25 if device.type == "cpu" else 2**28, device=device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    rows: list[dict[str, Any]] = []
    for label, shapes in sets.items():
        rows += _time_set(label, shapes, device, copy_gbs, runs=3, repeat=2 if quick else 5)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    threads = torch.get_num_threads()
    print_table(rows, title=f"Adan step on {device.type}, {threads} threads (copy bandwidth "
                f"{copy_gbs:.1f} GB/s; ratios: median [min, max] of 3 interleaved runs; "
                f"load average {load:.1f} before, {load_after:.1f} after)")  # fmt: skip
    summary = []
    for label in sets:
        mine = [r for r in rows if r["set"] == label and r["provider"].startswith("adan")]
        top = min(mine, key=lambda r: r["ms/step"])
        peer = next(
            (r for r in rows if r["set"] == label and "pytorch-optimizer" in r["provider"]), None
        )
        summary.append({
            "set": label, "best path": top["provider"], "x AdamW fused": top["x AdamW fused"],
            "x AdamW fused min": top["x AdamW fused min"],
            "x AdamW fused max": top["x AdamW fused max"],
            "speed-up vs pytorch-optimizer": peer["ms/step"] / top["ms/step"] if peer else None,
            "% copy bw": top["% copy bw"],
        })  # fmt: skip
    print_table(summary, title="Best Adan path (target: <= 1.6x AdamW fused; traffic floor "
                "44/28 = 1.57x; >= 2x faster than pytorch-optimizer)")  # fmt: skip
    result = {"rows": rows, "summary": summary, "copy_gbs": copy_gbs, "gate": gated,
              "paths_max_rel_diff": agree, "quick": quick, "device": device.type,
              "threads": threads, "load_average": [load, load_after]}  # fmt: skip
    write_result("adan", result)
    return result


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
