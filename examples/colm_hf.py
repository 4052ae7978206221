"""CoLM with the Hugging Face Trainer: fine-tune on coresets of each batch of an instruction mixture.

    python examples/colm_hf.py               # 60 steps, pool 64 -> coreset 16
    python examples/colm_hf.py --tiny        # a few seconds

Needs the ``hf`` extra (transformers + peft). The model is a tiny random Llama built from a config
(nothing is downloaded) with PEFT LoRA adapters; the data is batchcraft's synthetic instruction
mixture (arithmetic, word problems, string skills) whose sources have very different sizes. Each
Trainer batch of ``--pool`` examples is a pool: CoLM keeps every example of the small sources,
fills the rest of the ``--coreset`` budget per big source by facility location on zeroth-order
gradient features of the last V-projection's LoRA-B, and trains on that coreset only. With your
own model, pass its PEFT version and the names of its last block, final norm and head.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--pool", type=int, default=64, help="examples per Trainer batch (B)")
    p.add_argument("--coreset", type=int, default=16, help="examples trained per step (b)")
    p.add_argument("--out", type=Path, default=Path("runs/example-colm"))
    p.add_argument("--tiny", action="store_true", help="6 steps, pool 16 -> coreset 8")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.pool, args.coreset = 6, 16, 8
    try:
        from transformers import TrainingArguments

        from batchcraft.selection.colm.hf import (
            CoLMTrainer,
            find_module,
            find_param,
            lora_wrap,
            tiny_llama,
        )
    except ImportError as exc:  # one line, not a traceback
        sys.exit(f"error: {exc}")
    from batchcraft.data.mixture import make_mixture
    from batchcraft.selection.colm import CoLMSelector, ZOProbe
    from batchcraft.selection.colm.loss import per_example_lm_loss

    sizes = (400, 150, 60, 20) if args.tiny else (4000, 1500, 400, 120, 40)
    mix = make_mixture(sizes, seed=0, eval_size=32)
    rows = [{k: v[i] for k, v in mix.train.items()} for i in range(len(mix.train["source"]))]

    def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}  # [B, T] and source [B]

    model = lora_wrap(tiny_llama(mix.tokenizer.vocab_size, hidden_size=64, heads=4), r=8)
    last = f"layers.{model.config.num_hidden_layers - 1}"
    probe = ZOProbe(
        model, find_param(model, f"{last}.self_attn.v_proj.lora_B"), seed=0,
        split_at=find_module(model, last),  # the prefix runs once per pool, not per probe
        tail=(find_module(model, "model.norm"), find_module(model, "lm_head")),
    )  # fmt: skip
    selector = CoLMSelector(probe, coreset_size=args.coreset, source_counts=mix.counts, h=256)

    def eval_loss() -> float:  # mean per-example answer loss over every source's eval set
        model.eval()
        with torch.no_grad():
            losses = [
                per_example_lm_loss(
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                    b["labels"],
                ).mean()
                for b in mix.eval.values()
            ]
        return float(torch.stack(losses).mean())

    before = eval_loss()
    targs = TrainingArguments(
        output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=args.pool,
        learning_rate=5e-3, lr_scheduler_type="constant", report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=True, remove_unused_columns=False,  # keep "source"
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = CoLMTrainer(
        selector=selector, model=model, args=targs, train_dataset=rows, data_collator=collate
    )
    trainer.train()
    after = eval_loss()
    print(f"{mix.names}: {mix.counts.tolist()} training examples per source")
    print(f"{args.steps} steps on coresets of {args.coreset} from pools of {args.pool}")
    print(f"held-out answer loss {before:.3f} -> {after:.3f} nats/token")
    return {"before": before, "after": after, "selections": selector.steps}


if __name__ == "__main__":
    main()
