"""Training, evaluation and checkpoints for the LaCT LM (used by ``batchcraft lm`` and experiments).

Exact resume: batch ``i`` is a pure function of ``(seed, i)`` (:class:`ByteBatches`), the lr
schedule is a function of the step, and a checkpoint holds the model weights (safetensors), the
config (JSON), the optimizer state and the RNG state, written atomically as one folder. A run
resumed at step ``s`` therefore takes bit-identical steps to an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from batchcraft.data.text import ByteBatches
from batchcraft.models.lact_config import LaCTConfig
from batchcraft.models.lact_lm import LaCTForCausalLM
from batchcraft.utils.io import load_checkpoint, load_json, save_checkpoint, write_json

__all__ = [
    "TrainSettings",
    "build_optimizer",
    "evaluate",
    "init_distributed",
    "load_lm_checkpoint",
    "lr_at",
    "save_lm_checkpoint",
    "train_lm",
]


@dataclass(kw_only=True)
class TrainSettings:
    """What ``batchcraft lm train`` runs."""

    steps: int = 200
    batch_size: int = 8
    context: int = 256  # T: tokens per training window
    lr: float = 1e-3  # peak lr (paper: AdamW 1e-3, cosine)
    warmup: int = 20  # linear warm-up steps
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    optimizer: str = "adamw"  # adamw, or any name of batchcraft.optim.create_optimizer
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 4
    ckpt_every: int = 0  # 0: only at the end (when out_dir is set)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved with the run


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    frac = (step - s.warmup) / max(1, s.steps - s.warmup)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return s.lr * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * cos)


def build_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """AdamW (decay on matrices only) or a named optimizer from :mod:`batchcraft.optim`."""
    if s.optimizer.lower() == "adamw":
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95))
    from batchcraft.optim.factory import create_optimizer

    return create_optimizer(model, s.optimizer, lr=s.lr, weight_decay=s.weight_decay)


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Tensor, lr: float, clip: float
) -> float:
    """One optimizer step on ``batch [B, T + 1]``; returns the loss.

    ``model`` may be a ``DistributedDataParallel`` wrapper of the LM (gradients all-reduced).
    """
    for g in opt.param_groups:
        g["lr"] = lr
    logits = model(batch[:, :-1]).logits  # [B, T, V]
    loss = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), batch[:, 1:]
    )  # every input position predicts the next byte
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: LaCTForCausalLM, batches: Iterable[Tensor]) -> dict[str, Any]:
    """Validation loss, bits per byte and the per-position loss curve.

    Args:
        model: the LM.
        batches: ``[B, T + 1]`` windows; the first ``T`` tokens are the input, the loss at
            position ``t`` predicts token ``t + 1``.

    Returns:
        ``{"loss": nats/token, "bpb": bits/byte, "tokens": n, "per_position": [T] list}``.
    """
    was = model.training
    model.eval()
    total, count = 0.0, 0
    pos_sum: Tensor | None = None
    n_rows = 0
    for batch in batches:
        ids, tgt = batch[:, :-1], batch[:, 1:]
        logits = model(ids).logits.float()  # [B, T, V]
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), tgt, reduction="none"
        )  # [B, T]
        total += float(nll.sum())
        count += nll.numel()
        pos_sum = nll.sum(0) if pos_sum is None else pos_sum + nll.sum(0)
        n_rows += nll.shape[0]
    model.train(was)
    if count == 0 or pos_sum is None:
        raise ValueError("evaluate got no batches")
    loss = total / count
    return {
        "loss": loss,
        "bpb": loss / math.log(2),
        "tokens": count,
        "per_position": (pos_sum / n_rows).tolist(),
    }


def save_lm_checkpoint(
    path: str | os.PathLike[str],
    model: LaCTForCausalLM,
    opt: torch.optim.Optimizer | None,
    *,
    step: int,
    settings: TrainSettings | None = None,
    history: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``path/`` = model.safetensors + config.json + train_state.pt, atomically (folder swap)."""
    from safetensors.torch import save_file

    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    write_json(tmp / "config.json", model.config.to_dict())
    save_checkpoint(
        tmp / "train_state.pt",
        {
            "step": step,
            "optimizer": None if opt is None else opt.state_dict(),
            "settings": None if settings is None else asdict(settings),
            "rng": {"torch": torch.get_rng_state()},
            "history": history or [],
        },
    )
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def load_lm_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[LaCTForCausalLM, dict[str, Any]]:
    """Model (weights loaded) and the train state dict written by :func:`save_lm_checkpoint`."""
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a LaCT checkpoint folder (no config.json)")
    cfg = LaCTConfig.from_dict(load_json(p / "config.json"))
    model = LaCTForCausalLM(cfg)
    model.load_state_dict(load_file(str(p / "model.safetensors"), device=str(map_location)))
    state = load_checkpoint(p / "train_state.pt", map_location=map_location)
    return model.to(map_location), state


def _dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _dist_info()


def train_lm(
    model: LaCTForCausalLM,
    train: ByteBatches,
    s: TrainSettings,
    *,
    val: ByteBatches | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    on_step: Callable[[int, float, float], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``s.steps`` steps on ``train`` batches.

    Args:
        model: the LM (its weights are replaced by the checkpoint's when resuming).
        train: training batches ``[B, T + 1]`` (batch ``i`` depends only on its seed and ``i``).
        s: settings.
        val: validation batches (sequential windows) for periodic evaluation.
        out_dir: checkpoint folder ``out_dir/checkpoint``; None disables checkpoints.
        resume: continue from ``out_dir/checkpoint`` when it exists.
        on_step: ``fn(step, loss, tokens_per_s)`` after each step (progress display).
        stop_after: stop (and checkpoint) after this global step, as if interrupted.

    Returns:
        ``{"history": [...], "final_eval": {...} | None, "step": last step}``.
    """
    opt = build_optimizer(model, s)
    start, history = 0, []
    ckpt = None if out_dir is None else Path(out_dir) / "checkpoint"
    if resume and ckpt is not None and ckpt.exists():
        loaded, state = load_lm_checkpoint(ckpt)
        model.load_state_dict(loaded.state_dict())
        if state["optimizer"] is not None:
            opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        start, history = int(state["step"]), list(state["history"])
    model.train()
    rank, world = _dist_info()
    runner: torch.nn.Module = model
    if world > 1:  # torchrun: same init on every rank (broadcast), gradients averaged by DDP
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model)
    if rank != 0:
        ckpt = None  # rank 0 writes checkpoints
    end = s.steps if stop_after is None else min(s.steps, stop_after)
    step = start
    for step in range(start, end):
        t0 = time.perf_counter()
        batch = train.get(step * world + rank)  # disjoint batches per rank, same for world = 1
        loss = train_step(runner, opt, batch, lr_at(step, s), s.grad_clip)
        dt = time.perf_counter() - t0
        tps = world * train.batch_size * train.context / max(dt, 1e-9)
        rec: dict[str, Any] = {"step": step + 1, "loss": loss, "tokens_per_s": tps}
        if val is not None and s.eval_every and (step + 1) % s.eval_every == 0:
            rec["val"] = evaluate(model, val.sequential(s.eval_batches))["loss"]
        history.append(rec)
        if on_step is not None:
            on_step(step + 1, loss, tps)
        if ckpt is not None and s.ckpt_every and (step + 1) % s.ckpt_every == 0:
            save_lm_checkpoint(ckpt, model, opt, step=step + 1, settings=s, history=history)
    last = end if end > start else start
    if ckpt is not None:
        save_lm_checkpoint(ckpt, model, opt, step=last, settings=s, history=history)
    final = None
    if val is not None and last == s.steps:
        final = evaluate(model, val.sequential(s.eval_batches))
    return {"history": history, "final_eval": final, "step": last}
