"""Recipe: train with CoLM selection (and the baselines' static weights) in plain PyTorch.

One call of :meth:`ColmTrainer.step` takes a pool ``[N, ...]``, asks the selector for a coreset
(timed as *selection*), then runs one optimizer step on the coreset with the weighted
per-example loss (timed as *training*). Without a selector the whole pool is the batch (random
``b`` or big-batch ``B`` baselines, depending on the pool size the caller draws).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.selection.colm.arms import evaluate_sources, make_arm
from batchcraft.selection.colm.composition import small_sources_from_counts
from batchcraft.selection.colm.loss import coreset_loss, per_example_lm_loss
from batchcraft.selection.colm.probes import model_inputs
from batchcraft.selection.colm.select import CoLMSelector, subset_batch

__all__ = ["ColmTrainer", "TrainStats", "train_arm"]


@dataclass
class TrainStats:
    """What one step did: trained loss, timings (s), coreset size, kept count, batch sources."""

    loss: float
    select_s: float
    train_s: float
    size: int
    n_kept: int
    sources: Tensor | None = None  # [K] source ids of the trained batch (when present)


class ColmTrainer:
    """``step(pool)``: select (optional), then one optimizer step on the coreset.

    Args:
        model: the network (``model(**inputs)`` returns logits or an object with ``.logits``).
        optimizer: over the trainable parameters.
        selector: CoLM (or a baseline configured through it); ``None`` trains on the whole pool.
        source_weights: static per-source loss weights (the "upsample small sources" baseline).
        grad_clip: max global grad norm (``None``: no clipping).
        scheduler: an lr scheduler stepped after each optimizer step.
        loss_fn: per-example loss ``(logits, labels) -> [N]``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        selector: CoLMSelector | None = None,
        *,
        source_weights: Mapping[int, float] | None = None,
        grad_clip: float | None = 1.0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = per_example_lm_loss,
    ) -> None:
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.model, self.optimizer, self.selector = model, optimizer, selector
        self.source_weights = dict(source_weights or {})
        self.grad_clip, self.scheduler, self.loss_fn = grad_clip, scheduler, loss_fn

    def loss_on(self, batch: Mapping[str, Tensor], weights: Tensor) -> Tensor:
        """Weighted mean of per-example losses on ``batch`` (``weights: [K]``)."""
        out = self.model(**model_inputs(batch))
        logits = out.logits if hasattr(out, "logits") else out
        per = self.loss_fn(logits, batch["labels"])  # [K]
        return coreset_loss(per, weights.to(per.device))

    def step(self, pool: Mapping[str, Tensor]) -> TrainStats:
        """One optimizer step on the coreset of ``pool``."""
        t0 = time.perf_counter()
        if self.selector is not None:
            sel = self.selector.select(pool)
            batch, weights, n_kept = subset_batch(pool, sel.idx), sel.weights, int(sel.kept.sum())
        else:
            batch, n_kept = dict(pool), 0
            weights = torch.ones(pool["labels"].shape[0])
        if self.source_weights:
            sw = torch.tensor(
                [self.source_weights.get(int(s), 1.0) for s in batch["source"].tolist()]
            )
            weights = weights * sw
        t1 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_on(batch, weights)
        loss.backward()
        if self.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        t2 = time.perf_counter()
        src = batch.get("source")
        return TrainStats(float(loss.detach()), t1 - t0, t2 - t1, int(weights.numel()), n_kept, src)


def train_arm(
    name: str,
    mix: Any,
    *,
    steps: int,
    b: int,
    big: int,
    d_model: int = 48,
    h: int | None = 256,
    directions: int = 8,
    seed: int = 0,
    lr: float = 3e-3,
) -> dict[str, Any]:
    """Train a fresh tiny LM (all parameters, seed-fixed init) with arm ``name``; evaluate.

    AdamW (``lr``, no weight decay), 3 % warm-up then cosine, grad clip 1.0; the probed matrix is
    the last block's V projection; zeroth-order probes use the prefix/suffix split.

    Args:
        name: one of :data:`ARMS`.
        mix: a :class:`~batchcraft.data.mixture.Mixture`.
        steps: optimizer steps (the same for every arm).
        b, big: coreset size and pool size.
        d_model: model width.
        h, directions, seed: see :func:`make_arm`.
        lr: peak learning rate.

    Returns:
        ``eval`` (per source: loss, exact match), median ``select_s`` / ``train_s`` per step,
        ``small_frac`` (mean fraction of small-source examples in the trained batches).
    """
    from batchcraft.models.tiny_lm import TinyLM, TinyLMConfig

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cfg = TinyLMConfig(vocab_size=mix.tokenizer.vocab_size, d_model=d_model, n_heads=4, max_len=48)
    model = TinyLM(cfg, generator=torch.Generator().manual_seed(seed))
    last = f"blocks.{cfg.n_layers - 1}"
    arm = make_arm(
        name,
        model,
        f"{last}.attn.v.weight",
        b=b,
        big=big,
        counts=mix.counts,
        h=h,
        directions=directions,
        seed=seed,
        split_at=last,
        tail=("ln_f", "head"),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, int(0.03 * steps))

    def schedule(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    trainer = ColmTrainer(
        model, opt, arm.selector, source_weights=arm.source_weights, scheduler=sched
    )
    gen = torch.Generator().manual_seed(1_000 + seed)
    small = small_sources_from_counts(mix.counts)
    sel_t, train_t, small_frac = [], [], []
    for _ in range(steps):
        st = trainer.step(mix.sample_pool(arm.pool, generator=gen))
        sel_t.append(st.select_s)
        train_t.append(st.train_s)
        src = st.sources.tolist() if st.sources is not None else []
        small_frac.append(sum(int(q) in small for q in src) / st.size)
    return {
        "eval": evaluate_sources(model, mix.eval),
        "select_s": statistics.median(sel_t),
        "train_s": statistics.median(train_t),
        "small_frac": statistics.fmean(small_frac),
    }
