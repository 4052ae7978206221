"""End-to-end GraphSAGE training run used by ``batchcraft graph train`` and the experiment.

:func:`build_dataset` makes or loads the graph, :func:`run_training` builds the feature store,
loaders and model, trains with progress, checkpoints, resume, evaluates the final model on the
test split (``test_acc`` in the last history entry) and writes ``history.json``.
Launched by ``torchrun`` (``WORLD_SIZE > 1``) it trains data-parallel: each rank samples its own
shard of the training seeds, only rank 0 logs and writes files, evaluation is identical on all
ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from batchcraft.data.graphs import GraphData, load_planetoid, planted_partition, powerlaw_graph
from batchcraft.graph.csr import csr_from_edge_index
from batchcraft.graph.feature_store import PinnedFeatureStore
from batchcraft.graph.gcn import GCN
from batchcraft.graph.loader import NeighborLoader
from batchcraft.graph.sage import GraphSAGE
from batchcraft.graph.train import evaluate, fit, init_distributed
from batchcraft.utils.io import write_json
from batchcraft.utils.progress import progress_bar

__all__ = ["DATASETS", "TrainSettings", "build_dataset", "run_training"]

DATASETS = ("cora", "citeseer", "powerlaw", "planted")
MODELS: dict[str, type[GraphSAGE] | type[GCN]] = {"sage": GraphSAGE, "gcn": GCN}


@dataclass(kw_only=True)
class TrainSettings:
    """One training run (defaults: 2 layers, hidden 256, fan-outs 25,10)."""

    dataset: str = "powerlaw"  # cora | citeseer | powerlaw | planted
    model: str = "sage"  # sage | gcn
    num_nodes: int = 100_000  # power-law graph size
    avg_degree: float = 15.0  # power-law mean degree
    num_features: int = 128  # power-law feature width
    fanouts: list[int] = field(default_factory=lambda: [25, 10])
    batch_size: int = 1024
    backend: str = "auto"  # feature path: auto | cpu | staged | uva-triton | uva-view
    pin: str = "auto"
    epochs: int = 3
    hidden: int = 256
    lr: float = 3e-3
    dropout: float = 0.5
    prefetch: int = 1  # batches prepared ahead on a background thread
    max_batches: int | None = None  # cap per epoch
    seed: int = 0
    data_dir: Path | None = None


def build_dataset(s: TrainSettings) -> GraphData:
    """The graph named by ``s.dataset`` (real data from ``s.data_dir`` or the shared folder)."""
    if s.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {s.dataset!r}")
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


def run_training(
    s: TrainSettings,
    *,
    out_dir: Path,
    resume: bool = False,
    log: Callable[[str], Any] = print,
) -> list[dict[str, Any]]:
    """Train GraphSAGE (or GCN) per ``s``; returns the per-epoch history (also in ``history.json``).

    Under ``torchrun`` every rank returns the same history; only rank 0 logs and writes files.
    """
    rank, world = init_distributed()
    if rank != 0:
        log = _quiet
    data = build_dataset(s)
    graph = csr_from_edge_index(data.edge_index, data.num_nodes)
    store = PinnedFeatureStore(data.x, pin=s.pin, backend=s.backend)
    log(
        f"{data.name}: {data.num_nodes:,} nodes, {data.num_edges:,} edges, F={data.x.shape[1]}; "
        f"feature store: backend={store.backend}, pin={store.pin}, device={store.device}"
        + (f"; data parallel over {world} ranks" if world > 1 else "")
    )
    # world 1: exactly the single-process run; world W: shared shuffling, per-rank sampling seeds
    gen = torch.Generator().manual_seed(s.seed if world == 1 else s.seed + 7919 * rank)
    train_loader = NeighborLoader(
        graph, store, data.y, s.fanouts, batch_size=s.batch_size,
        input_nodes=data.train_idx, generator=gen, prefetch=s.prefetch,
        num_replicas=world, rank=rank, shuffle_seed=s.seed,
    )  # fmt: skip
    val_loader = NeighborLoader(
        graph, store, data.y, s.fanouts, batch_size=s.batch_size, input_nodes=data.val_idx,
        shuffle=False, generator=torch.Generator().manual_seed(s.seed + 1), prefetch=s.prefetch,
    )  # fmt: skip
    if s.model not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {s.model!r}")
    model = MODELS[s.model](
        data.x.shape[1], s.hidden, data.num_classes, num_layers=len(s.fanouts), dropout=s.dropout
    ).to(store.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_epoch = (
        len(train_loader) if s.max_batches is None else min(s.max_batches, len(train_loader))
    )

    def on_epoch(epoch: int, stats: Any, metrics: dict[str, float]) -> None:
        st = " ".join(f"{k} {v:.2f}s" for k, v in stats.stages.items())
        log(
            f"epoch {epoch}: loss {stats.loss:.4f} train acc {stats.accuracy:.3f} "
            f"val acc {metrics.get('val_acc', float('nan')):.3f} | {stats.seconds:.2f}s ({st})"
        )

    bar_ctx = progress_bar(per_epoch * s.epochs, "graph train") if rank == 0 else _no_bar()
    with bar_ctx as bar:
        history = fit(
            model,
            train_loader,
            epochs=s.epochs,
            lr=s.lr,
            eval_fn=lambda: {"val_acc": evaluate(model, val_loader)},
            checkpoint=out_dir / "checkpoint.pt",
            resume=resume,
            on_epoch=on_epoch,
            max_batches=s.max_batches,
            on_batch=lambda i, loss: bar.advance(loss=loss),
        )
    if history:  # the final model on the test split, sampled like validation
        test_loader = NeighborLoader(
            graph, store, data.y, s.fanouts, batch_size=s.batch_size, input_nodes=data.test_idx,
            shuffle=False, generator=torch.Generator().manual_seed(s.seed + 2),
            prefetch=s.prefetch,
        )  # fmt: skip
        history[-1]["test_acc"] = evaluate(model, test_loader)
        log(f"test acc {history[-1]['test_acc']:.3f} ({data.test_idx.numel()} nodes, final model)")
    if rank == 0:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}
        settings["world_size"] = world
        write_json(out_dir / "history.json", {"settings": settings, "history": history})
    store.close()
    return history


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Log sink of ranks other than 0."""


class _NoBar:
    def advance(self, n: int = 1, **fields: Any) -> None:
        """Ranks other than 0 draw no progress bar."""


@contextlib.contextmanager
def _no_bar() -> Iterator[_NoBar]:
    yield _NoBar()
