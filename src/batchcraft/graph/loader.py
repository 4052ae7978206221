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

Data parallel (``num_replicas = W > 1``, one loader per ``torchrun`` rank): every epoch all ranks
draw the same permutation of the seed pool from ``shuffle_seed`` and the epoch number (see
:meth:`NeighborLoader.set_epoch`), rank ``r`` takes the ``r``-th of ``W`` contiguous shards, and
every rank cuts its shard into the same number of batches (at most ``batch_size`` seeds each), so
the shards are disjoint, cover the pool, and no rank waits for a batch that never comes.
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
        drop_last: skip a last incomplete batch (with ``num_replicas > 1``: keep only full
            batches, the same number on every rank).
        num_replicas: data-parallel world size W (1 = the whole pool, the default).
        rank: this process's rank in ``[0, W)``.
        shuffle_seed: seed of the per-epoch permutation when ``W > 1`` (must be equal on all
            ranks; ``generator`` then only drives neighbour sampling).
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
        num_replicas: int = 1,
        rank: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=}, {rank=}"
            )
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
        elif not isinstance(input_nodes, Tensor):
            raise TypeError(
                f"input_nodes must be a tensor of int node ids or a bool mask, got "
                f"{type(input_nodes).__name__}"
            )
        elif input_nodes.dtype == torch.bool:
            if input_nodes.shape != (n,):
                raise ValueError(f"an input_nodes mask must have shape [{n}]")
            input_nodes = input_nodes.nonzero().view(-1)
        elif input_nodes.is_floating_point() or input_nodes.is_complex():
            raise TypeError(
                f"input_nodes must hold integer node ids (int32/int64) or be a bool mask, got "
                f"{input_nodes.dtype}; a float id such as 2.7 is not a node"
            )
        else:
            if input_nodes.dim() != 1:
                raise ValueError(
                    f"input_nodes must be 1-D [M], got shape {tuple(input_nodes.shape)}"
                )
            if input_nodes.numel() and (int(input_nodes.min()) < 0 or int(input_nodes.max()) >= n):
                raise IndexError(f"input_nodes ids must lie in [0, {n})")
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
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle_seed = shuffle_seed
        self.epoch = 0
        if num_replicas > 1 and self.input_nodes.numel() < num_replicas:
            raise ValueError(
                f"{self.input_nodes.numel()} seed nodes cannot be shared by {num_replicas} ranks: "
                "need at least one seed per rank"
            )

    def set_epoch(self, epoch: int) -> None:
        """Epoch number that selects the shared permutation when ``num_replicas > 1``."""
        self.epoch = epoch

    def __len__(self) -> int:
        m = self.input_nodes.numel()
        if self.num_replicas > 1:
            return self._replica_batches(m)[0]
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def _replica_batches(self, m: int) -> tuple[int, int]:
        """``(batches per rank, seeds kept per rank or -1 for all)`` for a pool of ``m`` seeds."""
        w, bs = self.num_replicas, self.batch_size
        if self.drop_last:
            k = (m // w) // bs
            return k, k * bs
        largest = -(-m // w)  # ceil(m / w) seeds on the largest shard
        k = -(-largest // bs)  # batches of <= bs seeds each that the largest shard needs
        if m // w < k:  # batch_size 1 with an uneven pool: a rank would get an empty batch
            raise ValueError(
                f"{m} seeds over {w} ranks with batch_size {bs} leaves a rank an empty batch: "
                "use batch_size >= 2, drop_last=True or a pool divisible by the world size"
            )
        return k, -1

    def shard_seeds(self) -> list[Tensor]:
        """This rank's seed batches for the current epoch (``num_replicas > 1``)."""
        m = self.input_nodes.numel()
        nodes = self.input_nodes
        if self.shuffle:
            g = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + self.epoch)
            nodes = nodes[torch.randperm(m, generator=g)]
        k, keep = self._replica_batches(m)
        shard = nodes.tensor_split(self.num_replicas)[self.rank]
        if keep >= 0:
            shard = shard[:keep]
        return list(shard.tensor_split(k)) if k > 0 else []

    def _seed_batches(self) -> list[Tensor]:
        if self.num_replicas > 1:
            return self.shard_seeds()
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
