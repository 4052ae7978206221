"""Mini-batch GraphSAGE training with per-stage timing, checkpoints and resume.

:func:`train_epoch` runs one pass of a :class:`NeighborLoader` and splits the epoch's wall time
into ``sample`` / ``gather`` / ``transfer`` (measured inside the loader) / ``compute``
(forward + backward + step) and ``wait`` (time the trainer waited for the next batch: the part of
the data path that the prefetch pipeline did not hide). :func:`fit` adds epochs, evaluation,
atomic checkpoints and resume.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`init_distributed` joins the process group (gloo on
CPU, nccl on GPU) and :func:`fit` wraps the model in ``DistributedDataParallel``: each rank trains
on its own shard of the seeds (a loader built with ``num_replicas``/``rank``), gradients are
averaged, the epoch's loss/accuracy are summed over ranks, and only rank 0 writes checkpoints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.graph.loader import NeighborLoader
from batchcraft.utils.io import load_checkpoint, save_checkpoint

__all__ = [
    "EpochStats",
    "dist_info",
    "evaluate",
    "fit",
    "full_graph_accuracy",
    "init_distributed",
    "train_epoch",
]

STAGES = ("sample", "gather", "transfer", "compute", "wait")


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of an initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on GPU).

    On CUDA the process also selects GPU ``LOCAL_RANK``. Returns ``(rank, world_size)``.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


@dataclass
class EpochStats:
    """What one epoch did.

    Attributes:
        loss: mean training loss over batches (seed-weighted).
        accuracy: training accuracy on the seeds.
        seconds: wall time of the epoch.
        stages: seconds per stage (see module docstring).
        losses: per-batch losses, in order.
    """

    loss: float
    accuracy: float
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def train_epoch(
    model: nn.Module,
    loader: NeighborLoader,
    optimizer: torch.optim.Optimizer,
    *,
    max_batches: int | None = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> EpochStats:
    """One epoch (or ``max_batches`` batches) of mini-batch training with cross-entropy on seeds.

    ``model`` may be a ``DistributedDataParallel`` wrapper; then ``loss`` and ``accuracy`` are
    over the seeds of all ranks (``losses`` stay this rank's).
    """
    model.train()
    stages = dict.fromkeys(STAGES, 0.0)
    losses: list[float] = []
    correct = seen = 0
    total_loss = 0.0
    t_start = time.perf_counter()
    t_wait = time.perf_counter()
    for i, batch in enumerate(loader):
        stages["wait"] += time.perf_counter() - t_wait
        for k, v in batch.timings.items():
            stages[k] += v
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(
            batch.x.float(),
            batch.edge_index,
            num_sampled_nodes=batch.num_sampled_nodes,
            num_sampled_edges=batch.num_sampled_edges,
        )[: batch.batch_size]
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        stages["compute"] += time.perf_counter() - t0
        losses.append(value)
        total_loss += value * batch.batch_size
        correct += int((logits.argmax(1) == batch.y).sum())
        seen += batch.batch_size
        if on_batch is not None:
            on_batch(i, value)
        if max_batches is not None and i + 1 >= max_batches:
            break
        t_wait = time.perf_counter()
    seconds = time.perf_counter() - t_start
    _, world = dist_info()
    if world > 1:  # epoch figures over every rank's seeds (identical on all ranks)
        import torch.distributed as dist

        sums = torch.tensor([total_loss, float(correct), float(seen)], dtype=torch.float64)
        dev = next(model.parameters()).device
        sums = sums.to(dev)
        dist.all_reduce(sums)
        total_loss, correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
    return EpochStats(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=seconds,
        stages=stages,
        losses=losses,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: NeighborLoader) -> float:
    """Accuracy on the seeds of ``loader`` (sampled inference)."""
    model.eval()
    correct = seen = 0
    for batch in loader:
        logits = model(
            batch.x.float(),
            batch.edge_index,
            num_sampled_nodes=batch.num_sampled_nodes,
            num_sampled_edges=batch.num_sampled_edges,
        )[: batch.batch_size]
        correct += int((logits.argmax(1) == batch.y).sum())
        seen += batch.batch_size
    return correct / max(seen, 1)


@torch.no_grad()
def full_graph_accuracy(
    model: nn.Module, x: Tensor, edge_index: Tensor, y: Tensor, nodes: Tensor
) -> float:
    """Accuracy of a full-graph forward pass on ``nodes`` (small graphs)."""
    model.eval()
    pred = model(x.float(), edge_index).argmax(1)
    return float((pred[nodes] == y[nodes]).float().mean())


def fit(
    model: nn.Module,
    train_loader: NeighborLoader,
    *,
    epochs: int,
    lr: float = 3e-3,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[int, EpochStats, dict[str, float]], None] | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs with Adam, evaluating and checkpointing after each.

    Args:
        model: the GNN.
        train_loader: yields training mini-batches.
        epochs: total epochs (a resumed run continues up to this number).
        lr: Adam learning rate.
        eval_fn: returns named metrics (e.g. ``{"val_acc": ...}``) after each epoch.
        checkpoint: file for model/optimizer/generator state + history, written atomically.
        resume: continue from ``checkpoint`` when it exists.
        on_epoch: progress callback ``(epoch, stats, metrics)``.
        max_batches: cap on batches per epoch (``None`` = the whole loader).
        on_batch: per-batch callback ``(batch_index, loss)``.

    Under an initialised process group with more than one rank the model is wrapped in
    ``DistributedDataParallel`` for training (rank 0's initial weights are broadcast), the
    loader's epoch is set each epoch (shared shuffling) and only rank 0 writes ``checkpoint``;
    ``eval_fn`` runs on every rank with the (identical) unwrapped model.

    Returns:
        History: one dict per epoch with loss, accuracy, seconds, stages and metrics.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        train_loader.generator.set_state(state["generator"])
        history = list(state["history"])
        start = int(state["epoch"])
    rank, world = dist_info()
    runner: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model)
        if rank != 0:
            checkpoint = None  # rank 0 writes checkpoints
    for epoch in range(start, epochs):
        train_loader.set_epoch(epoch)
        stats = train_epoch(runner, train_loader, opt, max_batches=max_batches, on_batch=on_batch)
        metrics = eval_fn() if eval_fn is not None else {}
        history.append(
            {
                "epoch": epoch + 1,
                "loss": stats.loss,
                "train_acc": stats.accuracy,
                "seconds": stats.seconds,
                "stages": stats.stages,
                **metrics,
            }
        )
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "generator": train_loader.generator.get_state(),
                    "history": history,
                    "epoch": epoch + 1,
                },
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, stats, metrics)
    return history
