"""Train a LaCT language model on your own text, then sample from it.

    python examples/lact_lm.py --text my_notes/ --steps 500      # your files (any text)
    python examples/lact_lm.py                                   # Python's standard library
    python examples/lact_lm.py --tiny                            # a few seconds

Bytes in, bytes out: no tokenizer to train. The run folder (``--out``) holds a safetensors
checkpoint; running the same command again resumes it, and ``batchcraft lm generate --checkpoint
OUT/checkpoint`` samples from it. For a BPE vocabulary, prepare token shards with ``batchcraft data
prepare`` and train with ``batchcraft lm train --data``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from batchcraft.data import ByteBatches, ByteTokenizer
from batchcraft.data.text import load_text_splits
from batchcraft.models import lact_tiny
from batchcraft.recipes.lm import LMTrainSettings, build_lm, train_lm


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", type=Path, action="append", help="file or folder (repeatable)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--context", type=int, default=128, help="bytes per training window")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("runs/example-lact-lm"))
    p.add_argument("--prompt", default="def ")
    p.add_argument("--tiny", action="store_true", help="20 steps on 256 KiB: a smoke run")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.context = 20, 32
    max_bytes = 1 << 18 if args.tiny else 1 << 22

    # train/validation split by file (or inside a single file); None = the standard library
    train_text, val_text = load_text_splits(args.text, max_bytes=max_bytes)
    train = ByteBatches(train_text, batch_size=args.batch, context=args.context, seed=0)
    val = ByteBatches(val_text, batch_size=args.batch, context=args.context, seed=0)
    model = build_lm(lact_tiny(), seed=0)  # 0.6M parameters; seeded initial weights
    settings = LMTrainSettings(steps=args.steps, batch_size=args.batch, context=args.context)
    res = train_lm(model, train, settings, val=val, out_dir=args.out, resume=True, progress="train")

    first, last = res["history"][0]["loss"], res["history"][-1]["loss"]
    ev = res["final_eval"]
    print(f"train loss {first:.3f} -> {last:.3f} nats/byte; held-out {ev['loss']:.3f} nats/byte")
    tok = ByteTokenizer()
    prompt = tok.encode(args.prompt)[None]  # [1, P]
    ids = model.generate(
        prompt,
        max_new_tokens=80,
        temperature=0.8,
        top_k=20,
        generator=torch.Generator().manual_seed(0),
    )  # [1, P + 80]
    print(repr(tok.decode(ids[0])))
    print(f"checkpoint: {args.out / 'checkpoint'}")
    return {"first_loss": first, "last_loss": last, "val_loss": ev["loss"]}


if __name__ == "__main__":
    main()
