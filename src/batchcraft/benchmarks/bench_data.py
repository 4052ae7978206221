"""Tokenized-corpus benchmark: ``data prepare`` throughput and the loader vs LM training speed.

* prepare: MB/s of text (Python standard-library files) tokenized into shards, with 1 and 2
  worker processes, for the ``bytes`` tokenizer and a BPE of vocabulary 4096 (trained once,
  then loaded, so the figure is tokenization + writing, not training).
* loader: training tokens/s of :class:`batchcraft.data.TokenShards` random windows (with
  ``cu_seqlens``), next to the LaCT LM's training tokens/s (forward + backward + AdamW) at the
  ``tiny`` and ``small`` presets with the same batch and context; the loader must be >= 20x.

Correctness is checked before timing: 1 and 2 workers write identical shards, a document decodes
to its file, and a loaded window equals the tokens on disk.

Run: ``batchcraft bench data`` (``--quick`` for a fast look) or ``python -m batchcraft.benchmarks.bench_data``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchcraft.data.prepare import prepare_corpus
from batchcraft.data.shards import TokenShards
from batchcraft.data.text import stdlib_files
from batchcraft.data.tokenizers import load_tokenizer
from batchcraft.models.lact_config import get_preset
from batchcraft.models.lact_lm import LaCTForCausalLM
from batchcraft.registry import register_benchmark
from batchcraft.utils.bench import copy_bandwidth_gbs, print_table, write_result

MIN_RATIO = 20.0  # the loader must be at least this many times faster than training


def _corpus(megabytes: float) -> list[Path]:
    """Standard-library files in sorted order until ``megabytes`` of text."""
    out, total = [], 0
    for f in stdlib_files():
        out.append(f)
        total += f.stat().st_size
        if total >= megabytes * 1e6:
            break
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _prepare_mbps(files: list[Path], tmp: Path, spec: str, workers: int, tag: str) -> float:
    out = tmp / f"run-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = prepare_corpus(files, out, tokenizer=spec, workers=workers, progress=False).manifest
    dt = time.perf_counter() - t0
    return sum(s["bytes"] for s in m["splits"].values()) / 1e6 / dt


def _check(files: list[Path], tmp: Path, tok_dir: Path) -> None:
    """Gates: worker count does not change the output; decode(doc) == file; window == disk."""
    m1 = prepare_corpus(files, tmp / "w1", tokenizer=str(tok_dir), progress=False).manifest
    m2 = prepare_corpus(files, tmp / "w2", tokenizer=str(tok_dir), workers=2, progress=False)
    if m1["splits"] != m2.manifest["splits"]:  # includes every shard's checksum
        raise RuntimeError("data prepare with 2 workers wrote different shards than with 1")
    shards = TokenShards(tmp / "w1", verify=True)
    tok = load_tokenizer(tok_dir)
    split = shards.split("train")
    ends = [*split.doc_starts[1:].tolist(), len(split)]
    first = split.read(0, ends[0])[:-1]  # without the end-of-document token
    texts = {f.read_text(encoding="utf-8", errors="replace") for f in files}
    if tok.decode(first) not in texts:
        raise RuntimeError("the first training document does not decode to any input file")
    b = shards.batches(4, 128, seed=0)
    rows, _ = b.get(3)
    flat = np.concatenate(
        [np.fromfile(split.files[k], dtype=shards.dtype) for k in range(len(split.files))]
    )
    for row, s in zip(rows, b.window_starts(3), strict=True):
        if not np.array_equal(row.numpy(), flat[s : s + 129]):
            raise RuntimeError("a loaded window differs from the tokens on disk")


def _train_step(model: LaCTForCausalLM, opt: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    logits = model(tokens[:, :-1]).logits  # [B, T, V]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@register_benchmark(
    "data",
    description="data prepare MB/s (1 vs 2 workers) and loader tokens/s vs LaCT LM training",
)
def main(quick: bool = False) -> dict[str, Any]:
    megabytes = 2.0 if quick else 8.0
    repeats = 2 if quick else 3
    files = _corpus(megabytes)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as td:
        tmp = Path(td)
        t0 = time.perf_counter()
        prepare_corpus(files, tmp / "bpe", tokenizer="bpe:4096", progress=False)
        bpe_train_s = time.perf_counter() - t0
        tok_dir = tmp / "bpe" / "tokenizer"
        _check(files, tmp, tok_dir)

        # ---- prepare throughput, variants interleaved (A B C D A B C D ...)
        variants = [("bytes", "bytes", 1), ("bytes", "bytes", 2)]
        variants += [("bpe:4096", str(tok_dir), 1), ("bpe:4096", str(tok_dir), 2)]
        mbps: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        for _ in range(repeats):
            for i, (_, spec, w) in enumerate(variants):
                mbps[i].append(_prepare_mbps(files, tmp, spec, w, str(i)))
        for i, (name, _, w) in enumerate(variants):
            st = _stats(mbps[i])
            rows.append(
                {
                    "case": f"prepare {name}",
                    "workers": w,
                    "MB/s": st["median"],
                    "MB/s min": st["min"],
                    "MB/s max": st["max"],
                }
            )
        for i in (1, 3):
            rows[i]["speedup vs 1 worker"] = rows[i]["MB/s"] / rows[i - 1]["MB/s"]

        # ---- loader vs training, interleaved per round
        shards = TokenShards(tmp / "bpe")
        copy_gbs = copy_bandwidth_gbs()
        itemsize = 8  # the loader returns int64 tokens
        for preset, batch, context in [("tiny", 8, 256), ("small", 4, 512)]:
            stream = shards.batches(batch, context, seed=0)
            torch.manual_seed(0)
            model = LaCTForCausalLM(get_preset(preset, vocab_size=shards.vocab_size))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            _train_step(model, opt, stream.get(0)[0])  # warm-up
            n_load = 20 if quick else 50
            load_tps, train_tps = [], []
            step = 1
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                for _ in range(n_load):
                    stream.get(step)
                    step += 1
                load_tps.append(n_load * batch * context / (time.perf_counter() - t0))
                tokens, _ = stream.get(step)
                t0 = time.perf_counter()
                _train_step(model, opt, tokens)
                train_tps.append(batch * context / (time.perf_counter() - t0))
            lo, tr = _stats(load_tps), _stats(train_tps)
            rows.append(
                {
                    "case": f"loader vs train {preset}",
                    "B": batch,
                    "T": context,
                    "loader tokens/s": lo["median"],
                    "train tokens/s": tr["median"],
                    "loader/train ratio": lo["median"] / tr["median"],
                    "worst ratio (min loader / max train)": lo["min"] / tr["max"],
                    "loader frac of copy GB/s": lo["median"] * itemsize / 1e9 / copy_gbs,
                }
            )
    print_table(rows, title=f"data ({megabytes:.0f} MB of stdlib text, BPE 4096)")
    worst = min(r["worst ratio (min loader / max train)"] for r in rows if "T" in r)
    load = os.getloadavg()
    print(
        f"BPE training {bpe_train_s:.1f}s; worst loader/train ratio {worst:.0f}x "
        f"(needs >= {MIN_RATIO:.0f}x); load average {load[0]:.2f} on {os.cpu_count()} cores"
    )
    res = {
        "rows": rows,
        "bpe_train_s": bpe_train_s,
        "corpus_MB": megabytes,
        "files": len(files),
        "worst_loader_train_ratio": worst,
        "loader_fast_enough": worst >= MIN_RATIO,
        "load_average": load,
        "threads": torch.get_num_threads(),
        "quick": quick,
    }
    write_result("data", res)
    if worst < MIN_RATIO:
        raise RuntimeError(f"the loader is only {worst:.1f}x the training rate (< {MIN_RATIO}x)")
    return res


if __name__ == "__main__":
    main()
