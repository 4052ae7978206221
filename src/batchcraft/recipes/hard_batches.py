"""Recipe: high-loss mini-batch training, the fast sampler path and the reference loop.

:func:`train_high_loss` drives a :class:`~batchcraft.selection.hard.HighLossSchedule` with one
``DataLoader(dataset, batch_sampler=FixedBatchSampler(P, ids))`` per round, so only the selected
batches are ever loaded. ``naive=True`` runs the reference loop instead, written like the
authors' code (iterate every batch of the loader each round, skip the unselected ones, Python-list
selection); both produce the same trained batch ids and, on deterministic CPU ops, identical
parameters. One reported "epoch" is ``b`` optimizer steps, not one pass over the data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from batchcraft.recipes.dist import dist_info
from batchcraft.recipes.seeding import isolated_rng, step_seed
from batchcraft.recipes.session import TrainSession
from batchcraft.selection.hard import (
    FixedBatchSampler,
    HighLossSchedule,
    fixed_partition,
    num_selected,
    num_training_steps,
)
from batchcraft.utils.io import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["HighLossLog", "score_batches", "supervised_loss", "train_high_loss"]

LossFn = Callable[[nn.Module, Any], Tensor]


def supervised_loss(criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> LossFn:
    """``loss_fn(model, (x, y)) = criterion(model(x), y)`` for ``(inputs, targets)`` batches."""

    def loss_fn(model: nn.Module, batch: Any) -> Tensor:
        x, y = batch
        return criterion(model(x), y)

    return loss_fn


@dataclass
class HighLossLog:
    """What a run did. One "epoch" = ``num_batches`` optimizer steps (not a pass over the data).

    Attributes:
        batch_ids: the batch trained at each step, in order.
        losses: the training loss of each step (the forward before the update).
        evals: ``(step, value)`` of ``eval_fn`` after every ``eval_every`` steps.
        rounds: rounds started.
        samples_loaded: dataset items the loaders fetched (fast path: steps * m).
        data_time_s / select_time_s / step_time_s / refresh_time_s: wall-clock totals.
    """

    num_batches: int
    batch_size: int
    delta: float
    num_steps: int
    batch_ids: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    rounds: int = 0
    samples_loaded: int = 0
    refresh_forwards: int = 0
    data_time_s: float = 0.0
    select_time_s: float = 0.0
    step_time_s: float = 0.0
    refresh_time_s: float = 0.0

    @property
    def steps_done(self) -> int:
        return len(self.batch_ids)

    @property
    def epochs_done(self) -> float:
        """Steps divided by ``b`` (the paper's "epoch")."""
        return self.steps_done / self.num_batches


def _to_device(batch: Any, device: torch.device | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _timed(it: Iterator[Any], log: HighLossLog) -> Iterator[Any]:
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        log.data_time_s += time.perf_counter() - t0
        yield item


@torch.no_grad()
def score_batches(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset[Any],
    partition: Tensor,
    *,
    loader_kwargs: dict[str, Any] | None = None,
    device: torch.device | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> Tensor:
    """Loss of every batch at the current parameters, in eval mode without gradients.

    Returns:
        ``[b]`` float64 losses (this rank's share of each batch under data parallelism).
    """
    was_training = model.training
    model.eval()
    sampler = FixedBatchSampler(
        partition, torch.arange(partition.shape[0]), num_replicas=num_replicas, rank=rank
    )
    loader = DataLoader(dataset, batch_sampler=sampler, **(loader_kwargs or {}))
    out = torch.tensor([float(loss_fn(model, _to_device(bt, device))) for bt in loader])
    model.train(was_training)
    return out.to(torch.float64)


def _evaluate(model: nn.Module, eval_fn: Callable[[nn.Module], float]) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(eval_fn(model))
    model.train(was_training)
    return value


def _step(model: nn.Module, loss_fn: LossFn, optimizer: Any, scheduler: Any, batch: Any) -> Tensor:
    model.train()
    loss = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def train_high_loss(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: Any,
    dataset: Dataset[Any],
    *,
    scheduler: Any | None = None,
    batch_size: int,
    delta: float,
    epochs: float,
    generator: torch.Generator | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    loader_kwargs: dict[str, Any] | None = None,
    naive: bool = False,
    shuffle: bool = True,
    selector: str = "hard",
    refresh_every: int | None = None,
    reshuffle: bool = False,
    device: torch.device | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    allow_change: bool = False,
    settings_meta: Mapping[str, Any] | None = None,
    checkpoint_every: int = 1,
    on_round_end: Callable[[HighLossLog], None] | None = None,
    progress: bool = False,
) -> HighLossLog:
    """Train ``model`` with high-loss mini-batch selection at plain training's step budget.

    Args:
        model: any module; put it in DDP yourself for data parallelism (ranks agree on batches).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss (see :func:`supervised_loss`).
        optimizer: anything with ``step()`` and ``zero_grad()``.
        scheduler: learning-rate scheduler stepped after every optimizer step (checkpointed).
        dataset: a map-style dataset of ``N`` items.
        batch_size: ``m``; the partition drops the last incomplete batch.
        delta: fraction of batches per round after round 0, in ``(0, 1]``; 1 = plain training.
        epochs: step budget ``S = max(1, round(epochs * b))``, ``b = N // batch_size``; get it
            before the run from :func:`~batchcraft.selection.hard.num_training_steps` to size a
            learning-rate schedule.
        generator: RNG of the partition (and of the random control / reshuffles); a private
            ``torch.Generator().manual_seed(0)`` when omitted. Its seed also reseeds the
            (forked) global RNG before every step, so dropout masks are a function of the step
            and a resumed run repeats the uninterrupted one exactly.
        eval_fn: ``eval_fn(model) -> float`` run in eval mode under ``no_grad``.
        eval_every: steps between evaluations (default ``b``, one "epoch").
        loader_kwargs: extra ``DataLoader`` arguments (``num_workers``, ``collate_fn``...).
        naive: run the reference loop (loads every batch every round; hard selection only).
        shuffle: randomly permute samples before cutting the partition (``False``: dataset order).
        selector: ``"hard"`` (the method) or ``"random"`` (K uniform batches: the control).
        refresh_every: re-score every batch with a no-grad eval forward before every R-th selection.
        reshuffle: re-draw the partition at the start of every round (an ablation; batch scores
            then describe batches whose contents have changed).
        device: move batches there before ``loss_fn``.
        out_dir: run folder: ``out_dir/checkpoint`` is written atomically every
            ``checkpoint_every`` rounds and at the end, and resumed from when ``resume``.
        resume: continue from ``out_dir/checkpoint`` when one exists; a resume whose settings
            (this function's arguments and ``settings_meta``) differ is refused unless
            ``allow_change``.
        allow_change: resume even though settings differ.
        settings_meta: what else defines the run for the resume guard (model, optimizer
            hyper-parameters, data), JSON-able.
        on_round_end: called with the log after each round (and its checkpoint).
        progress: show a progress bar.

    Returns:
        The :class:`HighLossLog` of the run.
    """
    import torch.distributed as dist

    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if len(dataset) < 1:  # type: ignore[arg-type]
        raise ValueError("the dataset is empty; nothing to train on")
    if not epochs > 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    steps = num_training_steps(len(dataset), batch_size, epochs)  # type: ignore[arg-type]
    partition = fixed_partition(len(dataset), batch_size, shuffle=shuffle, generator=gen)  # type: ignore[arg-type]
    b = partition.shape[0]
    num_selected(b, delta)  # validates delta early
    log = HighLossLog(b, batch_size, float(delta), steps)
    eval_every = eval_every or b
    if naive:
        if selector != "hard" or refresh_every is not None or reshuffle or out_dir is not None:
            raise ValueError(
                "naive=True is the reference loop: hard selection, no refresh, reshuffle or out_dir"
            )
        return _naive_loop(
            model,
            loss_fn,
            optimizer,
            scheduler,
            dataset,
            partition,
            log,
            delta,
            eval_fn,
            eval_every,
            loader_kwargs,
            device,
        )
    world, rank = 1, 0
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    sel_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    sched = HighLossSchedule(
        b,
        delta,
        steps,
        selector=selector,
        refresh_every=refresh_every,
        generator=sel_gen,
        sync=world > 1,
    )
    part_round = 0
    settings = {
        "train": {"batch_size": batch_size, "delta": float(delta), "epochs": float(epochs),
                  "selector": selector, "refresh_every": refresh_every, "reshuffle": reshuffle,
                  "shuffle": shuffle, "num_samples": len(dataset)},  # type: ignore[arg-type]
        **dict(settings_meta or {}),
    }  # fmt: skip
    session = TrainSession(
        "hard-batches", out_dir, settings=settings, resume=resume, allow_change=allow_change,
        budget_field=None, dist=dist_info("cpu"),
    )  # fmt: skip
    folder, _ = session.begin()
    if folder is not None:
        state = load_checkpoint(folder / "state.safetensors")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{folder} does not fit this model/optimizer: {exc}") from None
        sched.load_state_dict(state["schedule"])
        partition, part_round = state["partition"], state["partition_round"]
        gen.set_state(state["generator"])
        log = HighLossLog(**{**state["log"], "evals": [tuple(e) for e in state["log"]["evals"]]})

    def save() -> None:
        snapshot = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "schedule": sched.state_dict(), "partition": partition,
            "partition_round": part_round, "generator": gen.get_state(), "log": asdict(log),
        }  # fmt: skip
        session.save(log.steps_done, lambda f: save_checkpoint(f / "state.safetensors", snapshot))

    from batchcraft.utils.progress import progress_bar

    rounds_it = sched.rounds()
    desc = f"hard batches (delta={delta}, epoch = {b} steps)"
    base_seed = gen.initial_seed()
    with isolated_rng(), progress_bar(steps, desc) if progress else nullcontext(None) as bar:
        if bar is not None and log.steps_done:
            bar.advance(log.steps_done)
        while True:
            t0 = time.perf_counter()
            ids = next(rounds_it, None)
            log.select_time_s += time.perf_counter() - t0
            if ids is None:
                break
            r = sched.round_index - 1
            if reshuffle and r != part_round:
                partition, part_round = fixed_partition(len(dataset), batch_size, generator=gen), r  # type: ignore[arg-type]
            log.rounds = sched.round_index
            sampler = FixedBatchSampler(partition, ids, num_replicas=world, rank=rank)
            log.samples_loaded += sum(len(x) for x in sampler)
            loader = DataLoader(dataset, batch_sampler=sampler, **(loader_kwargs or {}))
            for i, batch in zip(ids.tolist(), _timed(iter(loader), log), strict=True):
                t1 = time.perf_counter()
                step_seed(base_seed, log.steps_done, rank)  # dropout etc.: a function of the step
                loss = _step(model, loss_fn, optimizer, scheduler, _to_device(batch, device))
                sched.record(i, loss)
                log.step_time_s += time.perf_counter() - t1
                log.batch_ids.append(i)
                log.losses.append(float(loss))
                if bar is not None:
                    bar.advance(loss=float(loss))
                if eval_fn is not None and (
                    log.steps_done % eval_every == 0 or log.steps_done == steps
                ):
                    log.evals.append((log.steps_done, _evaluate(model, eval_fn)))
            if sched.refresh_due:
                t2 = time.perf_counter()
                sched.refresh(
                    score_batches(
                        model,
                        loss_fn,
                        dataset,
                        partition,
                        device=device,
                        loader_kwargs=loader_kwargs,
                        num_replicas=world,
                        rank=rank,
                    )
                )
                log.refresh_forwards += b
                log.refresh_time_s += time.perf_counter() - t2
            if sched.finished or r % checkpoint_every == 0:
                save()  # rank 0 only, when there is a run folder
            if on_round_end is not None:
                on_round_end(log)
    return log


def _naive_loop(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: Any,
    scheduler: Any,
    dataset: Dataset[Any],
    partition: Tensor,
    log: HighLossLog,
    delta: float,
    eval_fn: Callable[[nn.Module], float] | None,
    eval_every: int,
    loader_kwargs: dict[str, Any] | None,
    device: torch.device | None,
) -> HighLossLog:
    """The reference: every round iterates the whole loader and discards unselected batches."""
    b, steps = partition.shape[0], log.num_steps
    k = num_selected(b, delta)
    loader = DataLoader(
        dataset, batch_sampler=FixedBatchSampler(partition, range(b)), **(loader_kwargs or {})
    )
    scores: list[float] = [math.inf] * b
    r = 0
    while log.steps_done < steps:
        t0 = time.perf_counter()
        if r == 0:
            selected = list(range(b))
        else:  # Python sort by (-score, index): ties go to the lower index; visit ascending
            selected = sorted(sorted(range(b), key=lambda j: (-scores[j], j))[:k])
        log.select_time_s += time.perf_counter() - t0
        log.rounds = r + 1
        for i, batch in enumerate(_timed(iter(loader), log)):
            log.samples_loaded += int((partition[i] >= 0).sum())
            if log.steps_done == steps:
                break
            if i not in selected:  # list membership, as in the authors' code
                continue
            t1 = time.perf_counter()
            loss = _step(model, loss_fn, optimizer, scheduler, _to_device(batch, device))
            scores[i] = float(loss)
            log.step_time_s += time.perf_counter() - t1
            log.batch_ids.append(i)
            log.losses.append(float(loss))
            if eval_fn is not None and (
                log.steps_done % eval_every == 0 or log.steps_done == steps
            ):
                log.evals.append((log.steps_done, _evaluate(model, eval_fn)))
        r += 1
    return log
