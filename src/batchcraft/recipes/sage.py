"""Recipe: neighbour-sampled GraphSAGE / GCN training (``batchcraft graph train``).

:func:`train_epoch` runs one pass of a :class:`~batchcraft.graph.loader.NeighborLoader` and splits
the epoch's wall time into ``sample`` / ``gather`` / ``transfer`` (measured inside the loader) /
``compute`` (forward + backward + step) and ``wait`` (time the trainer waited for the next batch:
the part of the data path that the prefetch pipeline did not hide). :func:`fit` adds epochs,
evaluation, atomic checkpoints and the guarded resume; :func:`run_training` is the whole run the
CLI starts (dataset, feature store, loaders, seeded model, fit, test accuracy, ``history.json``).

**Seeding.** ``seed`` decides the starting weights (:func:`build_model` builds them inside
:func:`~batchcraft.recipes.seeding.seeded`), and at the start of every epoch ``fit`` reseeds the
loader's generator (shuffling and neighbour sampling) and the forked global RNG (dropout) from
``(seed, epoch, rank)``. An epoch is therefore a pure function of the weights it starts from, so a
run resumed from an epoch checkpoint repeats the uninterrupted run bit for bit, and extending
``epochs`` continues exactly as a longer run would (the learning rate is constant).

**Data parallel.** Under ``torchrun`` (``WORLD_SIZE > 1``)
:func:`~batchcraft.recipes.dist.init_distributed` joins the process group and :func:`fit` wraps
the model in ``DistributedDataParallel``: each rank trains on its own shard of the seeds (a loader
built with ``num_replicas``/``rank``), gradients are averaged, the epoch's loss/accuracy are
summed over ranks, and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchcraft.data.graphs import GraphData, load_planetoid, planted_partition, powerlaw_graph
from batchcraft.graph.csr import csr_from_edge_index
from batchcraft.graph.feature_store import BACKENDS, PINS, PinnedFeatureStore
from batchcraft.graph.gcn import GCN
from batchcraft.graph.loader import NeighborLoader
from batchcraft.graph.sage import GraphSAGE
from batchcraft.recipes.dist import DistInfo, all_reduce_sum, dist_info, init_distributed
from batchcraft.recipes.seeding import derive_seed, isolated_rng, seeded, step_seed
from batchcraft.recipes.session import TrainSession, settings_dict
from batchcraft.utils.io import (
    CheckpointError,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from batchcraft.utils.progress import progress_bar

__all__ = [
    "DATASETS",
    "MODELS",
    "EpochStats",
    "SageTrainSettings",
    "build_dataset",
    "build_model",
    "evaluate",
    "fit",
    "full_graph_accuracy",
    "run_training",
    "train_epoch",
]

log = logging.getLogger(__name__)

STAGES = ("sample", "gather", "transfer", "compute", "wait")
DATASETS = ("cora", "citeseer", "powerlaw", "planted")
MODELS: dict[str, type[GraphSAGE] | type[GCN]] = {"sage": GraphSAGE, "gcn": GCN}


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


def _forward(model: nn.Module, batch: Any) -> Tensor:
    """Logits of the seeds: ``[B0, C]``."""
    return model(
        batch.x.float(),
        batch.edge_index,
        num_sampled_nodes=batch.num_sampled_nodes,
        num_sampled_edges=batch.num_sampled_edges,
    )[: batch.batch_size]


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
    # closing: a prefetch worker cut short by max_batches has stopped drawing from the loader's
    # generator before this returns (the next epoch reseeds it)
    with contextlib.closing(iter(loader)) as batches:  # type: ignore[type-var]
        for i, batch in enumerate(batches):
            stages["wait"] += time.perf_counter() - t_wait
            for k, v in batch.timings.items():
                stages[k] += v
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            logits = _forward(model, batch)
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
    # epoch figures over every rank's seeds (identical on all ranks; identity for a world of one)
    dev = next(model.parameters()).device
    total_loss, c, s = all_reduce_sum([total_loss, float(correct), float(seen)], dev)
    correct, seen = int(c), int(s)
    return EpochStats(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=seconds,
        stages=stages,
        losses=losses,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: NeighborLoader) -> float:
    """Accuracy on the seeds of ``loader`` (sampled inference, eval mode)."""
    model.eval()
    correct = seen = 0
    for batch in loader:
        logits = _forward(model, batch)
        correct += int((logits.argmax(1) == batch.y).sum())
        seen += batch.batch_size
    return correct / max(seen, 1)


@torch.no_grad()
def full_graph_accuracy(
    model: nn.Module, x: Tensor, edge_index: Tensor, y: Tensor, nodes: Tensor
) -> float:
    """Accuracy of a full-graph forward pass on ``nodes`` (small graphs).

    Shapes: x ``[N, F]``, edge_index ``[2, E]``, y ``[N]``, nodes ``[K]``.
    """
    model.eval()
    pred = model(x.float(), edge_index).argmax(1)
    return float((pred[nodes] == y[nodes]).float().mean())


def fit(
    model: nn.Module,
    train_loader: NeighborLoader,
    *,
    epochs: int,
    lr: float = 3e-3,
    seed: int = 0,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    allow_change: bool = False,
    settings_meta: Mapping[str, Any] | None = None,
    free: Iterable[str] = (),
    on_epoch: Callable[[int, EpochStats, dict[str, float]], None] | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    dist: DistInfo | None = None,
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs with Adam, evaluating and checkpointing after each.

    Args:
        model: the GNN (its starting weights are the caller's: build it with :func:`build_model`
            or inside :func:`~batchcraft.recipes.seeding.seeded`).
        train_loader: yields training mini-batches; its ``generator`` is reseeded from
            ``(seed, epoch, rank)`` at the start of every epoch.
        epochs: total epochs (a resumed run continues up to this number; raising it continues
            exactly as a longer run would).
        lr: Adam learning rate.
        seed: decides every epoch's shuffling, neighbour sampling and dropout.
        eval_fn: returns named metrics (e.g. ``{"val_acc": ...}``) after each epoch; it should be
            deterministic (reseed its loader) for a resumed history to equal an uninterrupted one.
        out_dir: run folder: ``out_dir/checkpoint/`` (model, optimizer and history in one
            safetensors file, swapped in atomically) after every epoch; ``None``: no files.
        resume: continue from ``out_dir/checkpoint`` when one exists.
        allow_change: resume even though settings differ from the checkpoint's.
        settings_meta: what else defines the run for the resume guard (model, data), JSON-able.
        free: setting names that may change on resume (they do not change the maths).
        on_epoch: progress callback ``(epoch, stats, metrics)``.
        max_batches: cap on batches per epoch (``None`` = the whole loader).
        on_batch: per-batch callback ``(batch_index, loss)``.
        dist: this rank (default: the initialised process group, else a world of one).

    Under a process group with more than one rank the model is wrapped in
    ``DistributedDataParallel`` for training (rank 0's initial weights are broadcast), the
    loader's epoch is set each epoch (shared shuffling) and only rank 0 writes checkpoints;
    ``eval_fn`` runs on every rank with the (identical) unwrapped model.

    Returns:
        History: one dict per epoch with loss, accuracy, seconds, stages and metrics.

    Raises:
        ResumeError: the checkpoint's settings differ and ``allow_change`` is off.
        CheckpointError: the checkpoint is damaged or does not fit the model.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    dist = dist or dist_info(next(model.parameters()).device)
    session = _session(
        epochs=epochs, lr=lr, seed=seed, max_batches=max_batches, out_dir=out_dir,
        resume=resume, allow_change=allow_change, settings_meta=settings_meta, free=free,
        dist=dist,
    )  # fmt: skip
    folder, _ = session.begin()
    return _fit(
        model, train_loader, session, folder, epochs=epochs, lr=lr, seed=seed, eval_fn=eval_fn,
        on_epoch=on_epoch, max_batches=max_batches, on_batch=on_batch,
    )  # fmt: skip


def _session(
    *,
    epochs: int,
    lr: float,
    seed: int,
    max_batches: int | None,
    out_dir: str | Path | None,
    resume: bool,
    allow_change: bool,
    settings_meta: Mapping[str, Any] | None,
    free: Iterable[str],
    dist: DistInfo,
) -> TrainSession:
    """The run folder and resume guard of :func:`fit` (what it saves as the run's settings)."""
    train = {"epochs": epochs, "lr": lr, "seed": seed, "max_batches": max_batches,
             "world_size": dist.world_size}  # fmt: skip
    return TrainSession(
        "graph-sage", out_dir, settings={"train": train, **dict(settings_meta or {})},
        dist=dist, resume=resume, allow_change=allow_change, free=free,
        budget_field="train.epochs",  # every epoch is seeded on its own: extending is exact
    )  # fmt: skip


def _fit(
    model: nn.Module,
    train_loader: NeighborLoader,
    session: TrainSession,
    folder: Path | None,
    *,
    epochs: int,
    lr: float,
    seed: int,
    eval_fn: Callable[[], dict[str, float]] | None,
    on_epoch: Callable[[int, EpochStats, dict[str, float]], None] | None,
    max_batches: int | None,
    on_batch: Callable[[int, float], None] | None,
) -> list[dict[str, Any]]:
    """:func:`fit` once ``session.begin()`` has returned ``folder`` (the checkpoint to resume)."""
    dist = session.dist
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    start = 0
    if folder is not None:
        path = folder / "state.safetensors"
        state = load_checkpoint(path)
        load_module_state(model, state["model"], path)
        try:
            opt.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not fit this optimizer: {exc}") from None
        history, start = list(state["history"]), int(state["epoch"])
        if dist.is_main:
            log.info(f"resumed from {folder} after epoch {start}")
    runner: nn.Module = model
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model)
    with isolated_rng():
        for epoch in range(start, epochs):
            train_loader.set_epoch(epoch)
            train_loader.generator.manual_seed(derive_seed(seed, "graph-sample", epoch, dist.rank))
            step_seed(seed, epoch, dist.rank)  # dropout of this epoch
            stats = train_epoch(
                runner, train_loader, opt, max_batches=max_batches, on_batch=on_batch
            )
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
            snapshot = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "history": history, "epoch": epoch + 1}  # fmt: skip
            session.save(epoch + 1, _writer(snapshot))
            if on_epoch is not None:
                on_epoch(epoch + 1, stats, metrics)
    return history


def _writer(snapshot: dict[str, Any]) -> Callable[[Path], object]:
    """Fills a checkpoint folder with ``state.safetensors`` (tensors + JSON, no pickle)."""
    return lambda folder: save_checkpoint(folder / "state.safetensors", snapshot)


@dataclass(frozen=True, kw_only=True)
class SageTrainSettings:
    """One ``graph train`` run (defaults: 2 layers, hidden 256, fan-outs 25,10); validated on
    construction."""

    dataset: str = "powerlaw"  # cora | citeseer | powerlaw | planted
    model: str = "sage"  # sage | gcn
    num_nodes: int = 100_000  # power-law graph size
    avg_degree: float = 15.0  # power-law mean degree
    num_features: int = 128  # power-law feature width
    fanouts: tuple[int, ...] = (25, 10)  # per hop; -1 = all neighbours
    batch_size: int = 1024
    backend: str = "auto"  # feature path: auto | cpu | staged | uva-triton | uva-view
    pin: str = "auto"
    epochs: int = 3
    hidden: int = 256
    lr: float = 3e-3
    dropout: float = 0.5
    prefetch: int = 1  # batches prepared ahead on a background thread
    max_batches: int | None = None  # cap per epoch
    seed: int = 0  # graph generator, starting weights, every epoch's sampling and dropout
    data_dir: Path | None = None

    # may change on resume: they move data, not maths (losses are equal across backends)
    FREE: ClassVar[tuple[str, ...]] = ("backend", "pin", "prefetch", "data_dir")

    def __post_init__(self) -> None:
        object.__setattr__(self, "fanouts", tuple(self.fanouts))
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {tuple(MODELS)}, got {self.model!r}")
        for name in ("num_nodes", "num_features", "batch_size", "epochs", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not self.fanouts or any(
            isinstance(f, bool) or not isinstance(f, int) or (f < 1 and f != -1)
            for f in self.fanouts
        ):
            raise ValueError(
                f"fanouts must be one positive int (or -1: all neighbours) per hop, got "
                f"{self.fanouts!r}"
            )
        if not (math.isfinite(self.avg_degree) and self.avg_degree > 0):
            raise ValueError(f"avg_degree must be a finite number > 0, got {self.avg_degree}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout}")
        if self.prefetch < 0 or self.seed < 0:
            raise ValueError(
                f"prefetch and seed must be >= 0, got prefetch={self.prefetch}, seed={self.seed}"
            )
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(
                f"max_batches must be >= 1 (or None: whole epochs), got {self.max_batches}"
            )
        backends = ("auto", *BACKENDS, "uva", "uva_view", "uva_triton")
        if self.backend not in backends:
            raise ValueError(f"backend must be one of {backends}, got {self.backend!r}")
        if self.pin not in PINS:
            raise ValueError(f"pin must be one of {PINS}, got {self.pin!r}")


def build_dataset(s: SageTrainSettings) -> GraphData:
    """The graph named by ``s.dataset`` (real data from ``s.data_dir`` or the data folders)."""
    if s.dataset in ("cora", "citeseer"):
        from batchcraft.data.paths import data_dir_candidates, find_data_dir

        if s.data_dir is not None:
            folders = [find_data_dir(s.data_dir)]  # raises when the folder itself is missing
        else:
            folders = list(dict.fromkeys(data_dir_candidates()))
        tried = [Path(f) / f"{s.dataset}.zip" for f in folders if f is not None]
        for path in tried:
            if path.exists():
                return load_planetoid(path)
        raise FileNotFoundError(
            f"{s.dataset}.zip not found; tried {', '.join(map(str, tried))}: pass --data-dir "
            "or set $BATCHCRAFT_DATA"
        )
    if s.dataset == "planted":
        return planted_partition(seed=s.seed)
    return powerlaw_graph(s.num_nodes, s.avg_degree, num_features=s.num_features, seed=s.seed)


def build_model(s: SageTrainSettings, in_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised ``s.model`` whose starting weights are decided by ``s.seed``."""
    with seeded(derive_seed(s.seed, "graph-init")):
        return MODELS[s.model](
            in_features, s.hidden, num_classes, num_layers=len(s.fanouts), dropout=s.dropout
        )


def run_training(
    s: SageTrainSettings,
    *,
    out_dir: str | Path | None,
    resume: bool = True,
    allow_change: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train GraphSAGE (or GCN) per ``s``; returns the per-epoch history (also in
    ``out_dir/history.json``), the last entry with the final model's ``test_acc``.

    Under ``torchrun`` every rank returns the same history; only rank 0 logs and writes files.

    Raises:
        ResumeError: ``out_dir/checkpoint`` was written with other settings (``allow_change``
            resumes anyway).
        FileNotFoundError: a Planetoid zip is missing (the message names every path tried).
    """
    dist = init_distributed("cpu" if s.backend == "cpu" else "auto")
    say = log.info if dist.is_main else log.debug
    run = {
        k: v
        for k, v in settings_dict(s).items()
        if k not in ("epochs", "lr", "seed", "max_batches")  # fit's own "train" settings
    }
    session = _session(
        epochs=s.epochs, lr=s.lr, seed=s.seed, max_batches=s.max_batches, out_dir=out_dir,
        resume=resume, allow_change=allow_change, settings_meta={"run": run},
        free=SageTrainSettings.FREE, dist=dist,
    )  # fmt: skip
    folder, _ = session.begin()  # writable run folder and the resume guard, before any work
    data = build_dataset(s)
    graph = csr_from_edge_index(data.edge_index, data.num_nodes)
    dev = dist.device if s.backend != "cpu" else torch.device("cpu")
    store = PinnedFeatureStore(data.x, pin=s.pin, backend=s.backend, device=dev)
    say(
        f"{data.name}: {data.num_nodes:,} nodes, {data.num_edges:,} edges, F={data.x.shape[1]}; "
        f"feature store: backend={store.backend}, pin={store.pin}, device={store.device}"
        + (f"; data parallel over {dist.world_size} ranks" if dist.distributed else "")
    )
    fan = list(s.fanouts)

    def loader(nodes: Tensor, shuffle: bool, **kw: Any) -> NeighborLoader:
        return NeighborLoader(
            graph, store, data.y, fan, batch_size=s.batch_size, input_nodes=nodes,
            shuffle=shuffle, prefetch=s.prefetch, **kw,
        )  # fmt: skip

    # the training generator is reseeded by fit every epoch; shuffling is shared across ranks
    train_loader = loader(data.train_idx, True, num_replicas=dist.world_size, rank=dist.rank,
                          shuffle_seed=derive_seed(s.seed, "graph-shuffle") % 2**31)  # fmt: skip
    val_loader = loader(data.val_idx, False, generator=torch.Generator())
    model = build_model(s, data.x.shape[1], data.num_classes).to(store.device)

    def eval_fn() -> dict[str, float]:
        val_loader.generator.manual_seed(derive_seed(s.seed, "graph-val"))  # same every epoch
        return {"val_acc": evaluate(model, val_loader)}

    def on_epoch(epoch: int, stats: EpochStats, metrics: dict[str, float]) -> None:
        st = " ".join(f"{k} {v:.2f}s" for k, v in stats.stages.items())
        say(
            f"epoch {epoch}: loss {stats.loss:.4f} train acc {stats.accuracy:.3f} "
            f"val acc {metrics.get('val_acc', float('nan')):.3f} | {stats.seconds:.2f}s ({st})"
        )

    per_epoch = (
        len(train_loader) if s.max_batches is None else min(s.max_batches, len(train_loader))
    )
    show = progress and dist.is_main
    try:
        with progress_bar(per_epoch * s.epochs if show else None, "graph train") as bar:
            history = _fit(
                model, train_loader, session, folder, epochs=s.epochs, lr=s.lr, seed=s.seed,
                eval_fn=eval_fn, on_epoch=on_epoch, max_batches=s.max_batches,
                on_batch=(lambda i, loss: bar.advance(loss=loss)) if show else None,
            )  # fmt: skip
        if history:  # the final model on the test split, sampled like validation
            test_loader = loader(data.test_idx, False,
                                 generator=torch.Generator().manual_seed(derive_seed(s.seed, "graph-test")))  # fmt: skip
            history[-1]["test_acc"] = evaluate(model, test_loader)
            say(
                f"test acc {history[-1]['test_acc']:.3f} ({data.test_idx.numel()} nodes, "
                "final model)"
            )
        session.write_json(
            "history.json",
            {"settings": {**settings_dict(s), "world_size": dist.world_size}, "history": history},
        )
    finally:
        store.close()
    return history
