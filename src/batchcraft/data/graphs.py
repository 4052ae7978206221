"""Graph datasets: seeded synthetic generators and Planetoid / edge-list loaders.

* :func:`planted_partition`: stochastic block model with noisy one-hot features (a graph where
  neighbourhood averaging clearly helps; GraphSAGE should reach >= 0.9 accuracy).
* :func:`powerlaw_graph`: Chung-Lu style graph with power-law degrees, homophilous classes and
  noisy class-centroid features, sized from tiny to tens of millions of edges (vectorised).
* :func:`load_planetoid`: Cora / CiteSeer / PubMed from the Planetoid ``ind.<name>.*`` files (a zip
  or a folder), with the standard split.
* :func:`load_edge_list`: whitespace-separated ``src dst`` text files.

Every generator takes an explicit seed or ``torch.Generator``; none touches the global RNG.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from batchcraft.data.archive import MAX_MEMBER_BYTES, read_file, read_member
from batchcraft.data.safe_pickle import CSRArrays, csr_to_dense, load_planetoid_pickle

__all__ = [
    "GraphData",
    "load_edge_list",
    "load_planetoid",
    "planted_partition",
    "powerlaw_graph",
    "to_undirected",
]


@dataclass
class GraphData:
    """A node-classification graph.

    Attributes:
        x: ``[N, F]`` node features.
        y: ``[N]`` int64 labels (-1 = unlabelled).
        edge_index: ``[2, E]`` directed edges (row = source, col = destination).
        train_idx, val_idx, test_idx: node ids of each split.
        num_classes: C.
        name: dataset name.
    """

    x: Tensor
    y: Tensor
    edge_index: Tensor
    train_idx: Tensor
    val_idx: Tensor
    test_idx: Tensor
    num_classes: int
    name: str = ""

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


def _gen(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def to_undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Both directions of every edge, self-loops and duplicates removed, sorted by (src, dst)."""
    ei = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    ei = ei[:, ei[0] != ei[1]]
    key = torch.unique(ei[0] * num_nodes + ei[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def _split(
    n: int, gen: torch.Generator, frac: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=gen)
    a, b = int(frac[0] * n), int((frac[0] + frac[1]) * n)
    return perm[:a].sort().values, perm[a:b].sort().values, perm[b:].sort().values


def planted_partition(
    num_blocks: int = 4,
    block_size: int = 500,
    p_in: float = 0.05,
    p_out: float = 0.005,
    *,
    feature_noise: float = 1.0,
    signal: float = 0.5,
    split: tuple[float, float] = (0.5, 0.1),
    seed: int | torch.Generator = 0,
) -> GraphData:
    """Stochastic block model: ``num_blocks`` equal blocks, edge prob ``p_in`` inside, ``p_out`` across.

    Features are ``signal * one_hot(block) + feature_noise * N(0, 1)`` (``num_blocks`` columns), so
    a single node is hard to classify but averaging over its (mostly same-block) neighbours is easy.
    """
    if num_blocks < 1 or block_size < 1:
        raise ValueError("num_blocks and block_size must be >= 1")
    if not (0 <= p_out <= 1 and 0 <= p_in <= 1):
        raise ValueError(f"p_in ({p_in}) and p_out ({p_out}) must be probabilities")
    gen = _gen(seed)
    n = num_blocks * block_size
    y = torch.arange(n) // block_size
    if n <= 8000:  # exact Bernoulli per pair
        iu = torch.triu_indices(n, n, offset=1)
        p = torch.where(y[iu[0]] == y[iu[1]], p_in, p_out)
        keep = torch.rand(p.shape, generator=gen) < p
        edges = iu[:, keep]
    else:  # approximate: the expected number of uniform pairs per block pair
        m_in = int(p_in * block_size * (block_size - 1) / 2) * num_blocks
        m_out = int(p_out * (n * n - num_blocks * block_size**2) / 2)
        b = torch.randint(0, num_blocks, (m_in,), generator=gen) * block_size
        src_in = b + torch.randint(0, block_size, (m_in,), generator=gen)
        dst_in = b + torch.randint(0, block_size, (m_in,), generator=gen)
        src_out = torch.randint(0, n, (m_out,), generator=gen)
        dst_out = torch.randint(0, n, (m_out,), generator=gen)
        edges = torch.stack([torch.cat([src_in, src_out]), torch.cat([dst_in, dst_out])])
    edge_index = to_undirected(edges, n)
    x = signal * torch.nn.functional.one_hot(y, num_blocks).float()
    x = x + feature_noise * torch.randn(n, num_blocks, generator=gen)
    tr, va, te = _split(n, gen, split)
    return GraphData(x, y, edge_index, tr, va, te, num_blocks, "planted_partition")


def powerlaw_graph(
    num_nodes: int = 10000,
    avg_degree: float = 10.0,
    *,
    num_features: int = 128,
    num_classes: int = 8,
    exponent: float = 2.5,
    homophily: float = 0.8,
    signal: float = 0.5,
    dtype: torch.dtype = torch.float32,
    split: tuple[float, float] = (0.5, 0.1),
    seed: int | torch.Generator = 0,
) -> GraphData:
    """Power-law (Chung-Lu) graph with learnable labels.

    Node ``i`` gets weight ``(i + 1) ** (-1 / (exponent - 1))``; ``num_nodes * avg_degree / 2``
    edge endpoints are drawn proportionally to weight (degree ~ power law with that exponent).
    With probability ``homophily`` an edge's destination is moved to the nearest node of the
    source's class (classes interleave, so weights barely change). Node ids are shuffled.
    Features: ``signal * centroid[class] + N(0, 1)``.

    Returns:
        A :class:`GraphData` with about ``num_nodes * avg_degree`` directed edges.
    """
    if num_nodes < 2 or avg_degree <= 0:
        raise ValueError("num_nodes must be >= 2 and avg_degree > 0")
    if exponent <= 1:
        raise ValueError(f"exponent must be > 1 (degree ~ k^-exponent), got {exponent}")
    if not 0 <= homophily <= 1:
        raise ValueError(f"homophily must be in [0, 1], got {homophily}")
    if num_classes < 1 or num_features < 1:
        raise ValueError("num_classes and num_features must be >= 1")
    gen = _gen(seed)
    n = num_nodes
    w = (torch.arange(n, dtype=torch.float64) + 1) ** (-1.0 / (exponent - 1))
    cdf = torch.cumsum(w, 0)
    cdf /= cdf[-1].clone()
    m = int(n * avg_degree / 2)
    src = torch.searchsorted(cdf, torch.rand(m, generator=gen, dtype=torch.float64)).clamp_max(
        n - 1
    )
    dst = torch.searchsorted(cdf, torch.rand(m, generator=gen, dtype=torch.float64)).clamp_max(
        n - 1
    )
    y_rank = torch.arange(n) % num_classes
    homo = torch.rand(m, generator=gen) < homophily
    moved = dst - y_rank[dst] + y_rank[src]
    moved = torch.where(moved >= n, moved - num_classes, moved)
    dst = torch.where(homo, moved, dst)
    perm = torch.randperm(n, generator=gen)  # new id of rank-ordered node i
    edge_index = to_undirected(torch.stack([perm[src], perm[dst]]), n)
    y = torch.empty(n, dtype=torch.long)
    y[perm] = y_rank
    centroids = torch.randn(num_classes, num_features, generator=gen)
    x = signal * centroids[y] + torch.randn(n, num_features, generator=gen)
    tr, va, te = _split(n, gen, split)
    return GraphData(x.to(dtype), y, edge_index, tr, va, te, num_classes, "powerlaw")


# ----------------------------------------------------------------------------------------------
# Planetoid


_PLANETOID_KEYS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")


def _open_planetoid(path: Path, name: str, max_bytes: int) -> dict[str, tuple[bytes, str]]:
    """``{key: (bytes, where)}`` of the eight ``ind.<name>.*`` files of a zip or a folder."""
    files: dict[str, tuple[bytes, str]] = {}
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = {Path(n).name: n for n in z.namelist()}
            for k in _PLANETOID_KEYS:
                fn = f"ind.{name}.{k}"
                if fn not in names:
                    raise FileNotFoundError(f"{path} has no {fn}")
                files[k] = (read_member(z, names[fn], max_bytes=max_bytes), f"{path}:{names[fn]}")
    elif path.is_dir():
        for k in _PLANETOID_KEYS:
            matches = sorted(path.rglob(f"ind.{name}.{k}"))
            if not matches:
                raise FileNotFoundError(f"no ind.{name}.{k} under {path}")
            files[k] = (read_file(matches[0], max_bytes=max_bytes), str(matches[0]))
    elif path.exists():
        raise ValueError(f"{path} is neither a zip archive nor a folder of ind.{name}.* files")
    else:
        raise FileNotFoundError(f"Planetoid dataset {str(path)!r} does not exist")
    return files


def _dense(obj: Any, where: str) -> Tensor:
    """A 2-D float32 tensor from an unpickled CSR matrix or numeric ndarray."""
    if isinstance(obj, CSRArrays):
        return csr_to_dense(obj, where)
    if isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(obj, dtype=np.float32))
    raise ValueError(f"{where}: expected a 2-D numeric matrix, got {type(obj).__name__}")


def _adjacency(obj: Any, where: str) -> dict[int, list[int]]:
    if not isinstance(obj, dict) or not all(
        isinstance(k, (int, np.integer)) and isinstance(v, list) for k, v in obj.items()
    ):
        raise ValueError(f"{where}: expected an adjacency dict {{node: [neighbours]}}")
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for v in obj.values() for d in v):
        raise ValueError(f"{where}: neighbour ids must be non-negative ints")
    return {int(k): [int(d) for d in v] for k, v in obj.items()}


def load_planetoid(
    path: str | Path, name: str | None = None, *, max_member_bytes: int = MAX_MEMBER_BYTES
) -> GraphData:
    """Load a Planetoid citation graph (Cora, CiteSeer, PubMed) from a zip or a folder.

    Features are ``allx`` rows then ``tx`` rows placed at the ``test.index`` positions; test ids
    missing from ``tx`` (CiteSeer's isolated nodes) get zero features and label -1. Labels are
    the argmax of the one-hot rows. Edges come from the adjacency dict, symmetrised, without
    self-loops or duplicates. Split: train = first ``len(y)`` ids, val = next 500, test = the
    ``test.index`` ids. The files are Python pickles: they are read with a restricted unpickler
    (:mod:`batchcraft.data.safe_pickle`) that only builds numeric arrays, CSR matrices and the
    adjacency dict and refuses anything else, so a crafted file cannot run code; scipy is not
    needed.

    Args:
        path: ``cora.zip``, a folder holding ``ind.<name>.*`` files, or a folder with ``<name>.zip``.
        name: ``"cora"``, ``"citeseer"`` or ``"pubmed"`` (default: the file/folder stem).
        max_member_bytes: cap on the size of any one file read into memory.
    """
    p = Path(path)
    name = (name or p.stem).lower()
    if p.is_dir() and (p / f"{name}.zip").exists() and not list(p.glob(f"ind.{name}.*")):
        p = p / f"{name}.zip"
    raw = _open_planetoid(p, name, max_member_bytes)
    obj = {k: load_planetoid_pickle(*raw[k]) for k in _PLANETOID_KEYS if k != "test.index"}
    allx_t, ally_t, tx_t, ty_t = (_dense(obj[k], raw[k][1]) for k in ("allx", "ally", "tx", "ty"))
    y_rows = _dense(obj["y"], raw["y"][1]).shape[0]
    graph = _adjacency(obj["graph"], raw["graph"][1])
    text, where = raw["test.index"][0].decode("utf-8", errors="replace"), raw["test.index"][1]
    try:
        test_index = torch.tensor([int(t) for t in text.split()], dtype=torch.long)
    except ValueError:
        raise ValueError(f"{where}: every line must hold one integer node id") from None
    if test_index.numel() != tx_t.shape[0] or ty_t.shape[0] != tx_t.shape[0]:
        raise ValueError(
            f"{where}: {test_index.numel()} test ids but tx has {tx_t.shape[0]} rows and ty "
            f"{ty_t.shape[0]}; the files do not belong together"
        )
    if allx_t.shape[0] != ally_t.shape[0] or allx_t.shape[1] != tx_t.shape[1]:
        raise ValueError(f"{raw['allx'][1]}: allx/ally/tx shapes do not match")
    if test_index.numel() and int(test_index.min()) < 0:
        raise ValueError(f"{where}: test ids must be >= 0")
    n = max(
        int(test_index.max()) + 1 if test_index.numel() else 0,
        allx_t.shape[0] + tx_t.shape[0],
        len(graph),
    )
    feats = torch.zeros(n, allx_t.shape[1])
    onehot = torch.zeros(n, ally_t.shape[1])
    feats[: allx_t.shape[0]] = allx_t
    onehot[: ally_t.shape[0]] = ally_t
    # row k of tx belongs to node test_index[k] (file order; Kipf's reorder of the sorted range)
    feats[test_index] = tx_t
    onehot[test_index] = ty_t
    labels = torch.where(onehot.sum(1) > 0, onehot.argmax(1), torch.full((n,), -1))
    src = [s for s, nbrs in graph.items() for _ in nbrs]
    dst = [d for _, nbrs in graph.items() for d in nbrs]
    if (src and max(src) >= n) or (dst and max(dst) >= n):
        raise ValueError(f"{raw['graph'][1]}: node ids beyond the {n} nodes of the features")
    edge_index = to_undirected(torch.tensor([src, dst], dtype=torch.long).view(2, -1), n)
    train_idx = torch.arange(y_rows)
    val_idx = torch.arange(y_rows, y_rows + 500)
    test_idx = test_index[labels[test_index] >= 0]
    return GraphData(feats, labels, edge_index, train_idx, val_idx, test_idx, ally_t.shape[1], name)


def load_edge_list(path: str | Path, num_nodes: int | None = None) -> tuple[Tensor, int]:
    """Read a ``src dst`` per line text file (``#`` comments allowed).

    Returns:
        ``(edge_index [2, E], num_nodes)``; ``num_nodes`` defaults to ``max id + 1``.
    """
    text = Path(path).read_text()
    vals = [ln.split("#", 1)[0].split() for ln in io.StringIO(text)]
    pairs = [v[:2] for v in vals if v]
    if any(len(v) < 2 for v in pairs):
        raise ValueError(f"{path}: every non-comment line must hold 'src dst'")
    ei = torch.tensor([[int(a) for a, _ in pairs], [int(b) for _, b in pairs]], dtype=torch.long)
    ei = ei.view(2, -1)
    n = int(ei.max()) + 1 if ei.numel() else 0
    if num_nodes is not None:
        if num_nodes < n:
            raise ValueError(f"num_nodes ({num_nodes}) is smaller than the largest id + 1 ({n})")
        n = num_nodes
    if ei.numel() and int(ei.min()) < 0:
        raise ValueError(f"{path}: node ids must be >= 0")
    return ei, n
