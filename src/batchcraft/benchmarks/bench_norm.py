"""Benchmarks ``norm`` (LayerNorm/RMSNorm GB/s vs copy bandwidth) and ``lnlstm`` (LN-LSTM/GRU vs nn.LSTM/GRU).

Run: ``batchcraft bench norm`` / ``batchcraft bench lnlstm`` (add ``--quick``), or
``python -m batchcraft.benchmarks.bench_norm [--quick]``. Every provider is first checked against the
reference on the benchmark's own inputs; then providers are timed side by side in one run.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F

from batchcraft.ops.norm import layer_norm, naive_layer_norm, naive_rms_norm, rms_norm
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import copy_bandwidth_gbs, print_table, timeit, write_result


def _providers(kind: str, device: str, with_compile: bool) -> dict[str, Any]:
    if kind == "layernorm":
        p: dict[str, Any] = {
            "naive": lambda x, w, b: naive_layer_norm(x, x.shape[-1], w, b),
            "torch": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
            "ours": lambda x, w, b: layer_norm(x, x.shape[-1], w, b),
        }
    else:
        p = {
            "naive": lambda x, w, b: naive_rms_norm(x, x.shape[-1], w, 1e-6),
            "torch": lambda x, w, b: F.rms_norm(x, (x.shape[-1],), w, 1e-6),
            "ours": lambda x, w, b: rms_norm(x, x.shape[-1], w, 1e-6),
        }
    if with_compile:
        p["compile"] = torch.compile(p["naive"], dynamic=False)
    if device == "cuda":
        p["ours_triton"] = (
            (lambda x, w, b: layer_norm(x, x.shape[-1], w, b, impl="triton"))
            if kind == "layernorm"
            else (lambda x, w, b: rms_norm(x, x.shape[-1], w, 1e-6, impl="triton"))
        )
    return p


@register_benchmark(
    "norm", description="LayerNorm/RMSNorm fwd/bwd GB/s vs copy bandwidth; torch, compile, Triton"
)
def bench_norm(quick: bool = False) -> dict[str, Any]:
    """GB/s with the unavoidable bytes (fwd 2*M*F*s, bwd 3*M*F*s) and % of measured copy bandwidth."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows_m = 4096 if device == "cuda" else (512 if quick else 2048)
    feats = [512, 1024, 4096] if quick else [256, 512, 1024, 2048, 4096]
    if device == "cuda":
        feats = [512, 1024, 2048, 4096, 8192]
    dtypes = [torch.float32, torch.bfloat16]
    copy_bw = copy_bandwidth_gbs(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    rows: list[dict[str, Any]] = []
    for kind in ("layernorm", "rmsnorm"):
        for dtype in dtypes:
            for feat in feats:
                with_compile = not quick and dtype == torch.float32 and feat in (1024, 4096)
                provs = _providers(kind, device, with_compile)
                x = (
                    torch.randn(rows_m, feat, generator=g, device=device)
                    .to(dtype)
                    .requires_grad_(True)
                )
                w = torch.randn(feat, generator=g, device=device).to(dtype).requires_grad_(True)
                b = torch.randn(feat, generator=g, device=device).to(dtype).requires_grad_(True)
                dy = torch.randn(rows_m, feat, generator=g, device=device).to(dtype)
                ref = provs["naive"](x, w, b).float()
                for name, fn in provs.items():  # correctness gate
                    err = (fn(x, w, b).float() - ref).abs().max().item()
                    tol = 1e-4 if dtype == torch.float32 else 5e-2
                    if err > tol:
                        raise RuntimeError(
                            f"{name} {kind} F={feat} {dtype}: max error {err} > {tol}"
                        )
                elem = x.element_size()
                row: dict[str, Any] = {
                    "op": kind,
                    "dtype": str(dtype).removeprefix("torch."),
                    "M": rows_m,
                    "F": feat,
                }
                for name, fn in provs.items():
                    tf = timeit(
                        lambda fn=fn, x=x, w=w, b=b: fn(x, w, b), warmup=2, repeat=5, device=device
                    )
                    y = fn(x, w, b)
                    tb = timeit(
                        lambda y=y, i=(x, w, b), dy=dy: torch.autograd.grad(
                            y, i, dy, retain_graph=True, allow_unused=True
                        ),
                        warmup=1, repeat=5, device=device,
                    )  # fmt: skip
                    gbs_f = (
                        2 * rows_m * feat * elem / tf["min_s"] / 1e9
                    )  # best-of: robust to a shared machine
                    gbs_b = 3 * rows_m * feat * elem / tb["min_s"] / 1e9
                    row[f"{name} fwd GB/s"] = gbs_f
                    row[f"{name} bwd GB/s"] = gbs_b
                    if name in ("ours", "ours_triton"):
                        row[f"{name} fwd % copy"] = 100 * gbs_f / copy_bw
                row["ours/torch fwd"] = row["ours fwd GB/s"] / row["torch fwd GB/s"]
                row["ours/torch bwd"] = row["ours bwd GB/s"] / row["torch bwd GB/s"]
                rows.append(row)
    print(f"copy bandwidth (measured, same run): {copy_bw:.1f} GB/s on {device}")
    print_table(rows, title="norm: GB/s (fwd 2*M*F*s, bwd 3*M*F*s bytes)")
    result = {"rows": rows, "copy_bandwidth_gbs": copy_bw, "device": device}
    write_result("norm", result)
    return result


def _lstm_pair(
    mode: str, inp: int, hid: int, device: str
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM

    cls, tcls = (LayerNormLSTM, torch.nn.LSTM) if mode == "lstm" else (LayerNormGRU, torch.nn.GRU)
    ref = tcls(inp, hid).to(device)
    ours = cls(inp, hid).to(device)  # impl="auto": the fused loop with a hand-written backward
    hoisted = cls(inp, hid, impl="hoisted").to(device)
    naive = cls(inp, hid, impl="naive").to(device)
    naive.load_state_dict(ours.state_dict())
    hoisted.load_state_dict(ours.state_dict())
    return ref, ours, hoisted, naive


def _best_ms(fn: Any, calls: int, device: str) -> float:
    return 1e3 * timeit(fn, warmup=0, repeat=calls, device=device)["min_s"]


def _spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-run values."""
    v = sorted(values)
    return v[len(v) // 2], v[0], v[-1]


def _lnlstm_row(
    mode: str, bsz: int, hid: int, t_len: int, device: str, runs: int
) -> dict[str, Any]:
    """One (mode, B, H) case: correctness gate, then ``runs`` interleaved timings of torch and ours."""
    ref, ours, hoisted, naive = _lstm_pair(mode, hid, hid, device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(t_len, bsz, hid, generator=g, device=device)
    # correctness gate in fp64 on the first 20 steps of this input (fp32 rounding differences
    # between two exact paths grow chaotically over 100 LN steps, to ~5e-4)
    with torch.no_grad():
        x64 = x[:20].double()
        a, b_ = ours.double()(x64)[0], naive.double()(x64)[0]
        ours.float(), naive.float()
    if (a - b_).abs().max().item() > 1e-9:
        raise RuntimeError(f"{mode}: fused != naive on the benchmark input")

    def fwd(m: torch.nn.Module) -> Any:
        return m(x)

    def fwd_bwd(m: torch.nn.Module) -> None:
        m(x)[0].sum().backward()

    for m in (ref, ours):  # warm-up (allocator, caches)
        fwd_bwd(m)
    times: dict[str, list[float]] = {k: [] for k in ("tf", "tfb", "of", "ofb")}
    for _ in range(runs):
        for key, m in (("t", ref), ("o", ours)):
            times[key + "f"].append(_best_ms(lambda m=m: fwd(m), 2, device))
            times[key + "fb"].append(_best_ms(lambda m=m: fwd_bwd(m), 2, device))
    ratio_fb = _spread([o / t for o, t in zip(times["ofb"], times["tfb"], strict=True)])
    ratio_f = _spread([o / t for o, t in zip(times["of"], times["tf"], strict=True)])
    row: dict[str, Any] = {"rnn": mode, "T": t_len, "B": bsz, "H": hid}
    row["torch (no LN) fwd+bwd ms"] = _spread(times["tfb"])[0]
    row["ours LN fwd+bwd ms"] = _spread(times["ofb"])[0]
    row["ours/torch fwd+bwd"] = ratio_fb[0]
    row["ours/torch fwd+bwd min"], row["ours/torch fwd+bwd max"] = ratio_fb[1:]
    row["ours/torch fwd"] = ratio_f[0]
    row["ours/torch fwd min"], row["ours/torch fwd max"] = ratio_f[1:]
    if mode == "lstm":
        row["hoisted LN fwd+bwd ms"] = _best_ms(lambda: fwd_bwd(hoisted), 2, device)
    if hid <= 256 and bsz <= 16:  # the naive loop is slow; one size is enough
        row["naive LN fwd+bwd ms"] = _best_ms(lambda: fwd_bwd(naive), 1, device)
        row["naive/ours fwd+bwd"] = row["naive LN fwd+bwd ms"] / row["ours LN fwd+bwd ms"]
    return row


@register_benchmark(
    "lnlstm", description="LN-LSTM/LN-GRU fwd and fwd+bwd vs nn.LSTM/GRU (no LN) vs naive loop"
)
def bench_lnlstm(quick: bool = False, runs: int = 3) -> dict[str, Any]:
    """T=100, (B, H) in {(16, 256), (64, 256), (64, 512)}, I=H, LSTM and GRU.

    Each ratio ours/torch is measured ``runs`` times (torch and ours interleaved within a run,
    each the best of 2 calls) and reported as the median with the min and max over the runs, so
    the noise of a shared machine is visible. The hoisted (autograd) and naive loops are timed
    once, for reference.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_len = 50 if quick else 100
    configs = [(16, 256)] if quick else [(16, 256), (64, 256), (64, 512)]
    rows = [
        _lnlstm_row(mode, bsz, hid, t_len, device, runs)
        for mode in ("lstm", "gru")
        for bsz, hid in configs
    ]
    threads = torch.get_num_threads()
    title = f"lnlstm on {device} ({threads} threads; ratios: median, min, max of {runs} runs)"
    print_table(rows, title=title)
    result = {"rows": rows, "device": device, "threads": threads, "runs": runs}
    write_result("lnlstm", result)
    return result


if __name__ == "__main__":
    q = "--quick" in sys.argv
    bench_norm(quick=q)
    bench_lnlstm(quick=q)
