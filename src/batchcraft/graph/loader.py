"""A ``NeighborLoader``-style mini-batch loader that pipelines sample -> gather -> transfer.

Each mini-batch is: seeds (a slice of the shuffled input nodes) -> :class:`NeighborSampler` ->
``features.gather(n_id)`` (any :class:`PinnedFeatureStore` backend, or a plain tensor) -> labels
and local edges moved to the device. With ``prefetch = k > 0`` a background thread prepares up
to ``k`` batches ahead while the caller trains on the current one (PyTorch ops release the GIL,
so sampling/gathering overlaps compute). Batches come out in the same order and with the same
contents as with ``prefetch=0``: only the worker thread touches the sampler's generator.
On CUDA the worker issues its gathers and copies on its own side stream (so they overlap the
trainer's kernels) and the consumer marks the tensors with ``record_stream``. Every batch records
how long its sample, gather and transfer stages took.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from batchcraft.graph.csr import CSRGraph
from batchcraft.graph.feature_store import PinnedFeatureStore
from batchcraft.graph.sampler import NeighborSampler

__all__ = ["MiniBatch", "NeighborLoader"]


@dataclass
class MiniBatch:
    """One sampled mini-batch, ready for a GNN forward pass.

    Attributes:
        x: ``[N_s, F]`` features of the sampled nodes (on the loader's device).
        y: ``[B0]`` labels of the seeds.
        edge_index: ``[2, E_s]`` local edges (row = source, col = destination).
        n_id: ``[N_s]`` global node ids (seeds first).
        batch_size: B0.
        num_sampled_nodes: nodes per hop (hop 0 = seeds).
        num_sampled_edges: edges per hop.
        timings: seconds spent in ``sample``, ``gather`` and ``transfer`` for this batch.
    """

    x: Tensor
    y: Tensor
    edge_index: Tensor
    n_id: Tensor
    batch_size: int
    num_sampled_nodes: list[int]
    num_sampled_edges: list[int]
    timings: dict[str, float] = field(default_factory=dict)


_DONE = object()


class NeighborLoader:
    """Iterate over mini-batches of sampled subgraphs.

    Args:
        graph: in-neighbour CSR.
        features: :class:`PinnedFeatureStore` or a ``[N, F]`` tensor (gathered with index_select).
        labels: ``[N]`` node labels.
        num_neighbors: fan-out per hop (``-1`` = all).
        batch_size: seeds per batch.
        input_nodes: ``[M]`` seed pool (default: every node); a bool mask is accepted.
        shuffle: shuffle the seed pool every epoch with ``generator``.
        generator: randomness for shuffling and sampling.
        device: where ``x``, ``y`` and ``edge_index`` go (default: the store's device or CPU).
        prefetch: batches prepared ahead on a background thread (0 = sequential).
        replace: sample with replacement.
        drop_last: skip a last incomplete batch.
    """

    def __init__(
        self,
        graph: CSRGraph,
        features: PinnedFeatureStore | Tensor,
        labels: Tensor,
        num_neighbors: list[int],
        *,
        batch_size: int = 1024,
        input_nodes: Tensor | None = None,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        prefetch: int = 1,
        replace: bool = False,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        n = graph.num_nodes
        rows = features.num_rows if isinstance(features, PinnedFeatureStore) else features.shape[0]
        if rows != n or labels.shape[0] != n:
            raise ValueError(
                f"features ({rows} rows) and labels ({labels.shape[0]}) must have one row per "
                f"graph node ({n})"
            )
        if input_nodes is None:
            input_nodes = torch.arange(n)
        elif input_nodes.dtype == torch.bool:
            if input_nodes.shape != (n,):
                raise ValueError(f"an input_nodes mask must have shape [{n}]")
            input_nodes = input_nodes.nonzero().view(-1)
        self.graph = graph
        self.features = features
        self.labels = labels
        self.input_nodes = input_nodes.long().cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.sampler = NeighborSampler(
            graph, num_neighbors, replace=replace, generator=self.generator
        )
        if device is None:
            device = features.device if isinstance(features, PinnedFeatureStore) else "cpu"
        self.device = torch.device(device)
        self.prefetch = prefetch
        self.drop_last = drop_last

    def __len__(self) -> int:
        m = self.input_nodes.numel()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _seed_batches(self) -> list[Tensor]:
        nodes = self.input_nodes
        if self.shuffle:
            nodes = nodes[torch.randperm(nodes.numel(), generator=self.generator)]
        batches = list(nodes.split(self.batch_size))
        if self.drop_last and batches and batches[-1].numel() < self.batch_size:
            batches.pop()
        return batches

    def make_batch(self, seeds: Tensor) -> MiniBatch:
        """Sample, gather and transfer one batch for ``seeds`` (the pipeline's unit of work)."""
        t0 = time.perf_counter()
        sub = self.sampler.sample(seeds)
        t1 = time.perf_counter()
        if isinstance(self.features, PinnedFeatureStore):
            x = self.features.gather(sub.n_id)
        else:
            x = self.features.index_select(0, sub.n_id)
        t2 = time.perf_counter()
        x = x.to(self.device, non_blocking=True)
        y = self.labels[seeds].to(self.device, non_blocking=True)
        edge_index = sub.edge_index.to(self.device, non_blocking=True)
        if self.device.type == "cuda":  # the data is ready when the batch is handed over
            torch.cuda.current_stream(self.device).synchronize()
        t3 = time.perf_counter()
        return MiniBatch(
            x=x,
            y=y,
            edge_index=edge_index,
            n_id=sub.n_id,
            batch_size=sub.batch_size,
            num_sampled_nodes=sub.num_sampled_nodes,
            num_sampled_edges=sub.num_sampled_edges,
            timings={"sample": t1 - t0, "gather": t2 - t1, "transfer": t3 - t2},
        )

    def __iter__(self) -> Iterator[MiniBatch]:
        batches = self._seed_batches()
        if self.prefetch == 0:
            for seeds in batches:
                yield self.make_batch(seeds)
            return
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        cuda = self.device.type == "cuda"

        def work() -> None:
            # On CUDA the worker enqueues its gathers/copies on its own side stream, so they
            # overlap the trainer's kernels on the current stream (make_batch synchronises it).
            side = torch.cuda.Stream(self.device) if cuda else None
            ctx = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
            try:
                with ctx:
                    for seeds in batches:
                        if stop.is_set():
                            return
                        q.put(self.make_batch(seeds))
                q.put(_DONE)
            except BaseException as e:  # re-raised in the consumer
                q.put(e)

        thread = threading.Thread(target=work, name="batchcraft-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, MiniBatch)
                if cuda:  # allocated on the side stream, used on this one: tell the allocator
                    cur = torch.cuda.current_stream(self.device)
                    for t in (item.x, item.y, item.edge_index):
                        t.record_stream(cur)
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a worker waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                thread.join(timeout=0.01)
