"""CSR construction and the neighbour sampler's properties."""

from __future__ import annotations

import pytest
import torch

from batchcraft.data.graphs import powerlaw_graph
from batchcraft.graph import CSRGraph, NeighborSampler, csr_from_data, csr_from_edge_index


def _graph(n: int = 300, seed: int = 0) -> tuple[CSRGraph, torch.Tensor]:
    d = powerlaw_graph(n, 8.0, num_features=4, seed=seed)
    return csr_from_edge_index(d.edge_index, n), d.edge_index


def _edge_set(ei: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, ei.t().tolist()))


def test_csr_roundtrip_and_neighbors() -> None:
    ei = torch.tensor([[0, 2, 1, 2, 3], [1, 1, 0, 3, 3]])
    g = csr_from_edge_index(ei, 5)
    assert g.indptr.tolist() == [0, 1, 3, 3, 5, 5]
    assert g.neighbors(1).tolist() == [0, 2] and g.neighbors(3).tolist() == [2, 3]
    assert _edge_set(g.to_edge_index()) == _edge_set(ei)
    assert g.degree().tolist() == [1, 2, 0, 2, 0]


def test_csr_errors_and_data_adapter() -> None:
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        csr_from_edge_index(torch.zeros(3, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="num_nodes"):
        csr_from_edge_index(torch.tensor([[0], [9]]), 4)
    with pytest.raises(TypeError):
        csr_from_edge_index(torch.tensor([[0.0], [1.0]]), 4)

    class D:
        edge_index = torch.tensor([[0, 1], [1, 2]])
        num_nodes = 3

    assert csr_from_data(D()).indptr.tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("fanouts", [[3, 2], [5], [1, 1, 1], [-1, 4]], ids=str)
def test_sampler_properties(fanouts: list[int]) -> None:
    g, ei = _graph()
    true_edges = _edge_set(ei)
    s = NeighborSampler(g, fanouts, generator=torch.Generator().manual_seed(0))
    seeds = torch.tensor([5, 17, 0, 299, 42])
    sub = s.sample(seeds)
    assert torch.equal(sub.n_id[: sub.batch_size], seeds)  # seeds first
    assert sub.n_id.unique().numel() == sub.n_id.numel()  # relabelling is injective
    assert sum(sub.num_sampled_nodes) == sub.n_id.numel()
    assert sum(sub.num_sampled_edges) == sub.edge_index.shape[1]
    glob = sub.n_id[sub.edge_index]  # local -> global
    assert _edge_set(glob) <= true_edges  # neighbours are real
    # per hop: count = min(f, deg), no duplicate edges, destinations in the previous hop's nodes
    deg = g.degree()
    start_e, start_n = 0, 0
    for hop, f in enumerate(fanouts):
        e = glob[:, start_e : start_e + sub.num_sampled_edges[hop]]
        frontier = sub.n_id[start_n : start_n + sub.num_sampled_nodes[hop]]
        counts = torch.bincount(e[1], minlength=g.num_nodes)[frontier]
        want = deg[frontier] if f == -1 else deg[frontier].clamp_max(f)
        assert torch.equal(counts, want), hop
        assert len(_edge_set(e)) == e.shape[1]
        start_e += sub.num_sampled_edges[hop]
        start_n += sub.num_sampled_nodes[hop]
    assert int(s._local.max()) == -1  # map reset for the next call


def test_sampler_deterministic_by_generator() -> None:
    g, _ = _graph()
    seeds = torch.arange(0, 300, 7)
    a = NeighborSampler(g, [4, 3], generator=torch.Generator().manual_seed(9)).sample(seeds)
    b = NeighborSampler(g, [4, 3], generator=torch.Generator().manual_seed(9)).sample(seeds)
    c = NeighborSampler(g, [4, 3], generator=torch.Generator().manual_seed(10)).sample(seeds)
    assert torch.equal(a.n_id, b.n_id) and torch.equal(a.edge_index, b.edge_index)
    assert not torch.equal(a.edge_index, c.edge_index)


def test_sampler_with_replacement() -> None:
    g, ei = _graph()
    s = NeighborSampler(g, [6], replace=True, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(50)
    sub = s.sample(seeds)
    glob = sub.n_id[sub.edge_index]
    assert _edge_set(glob) <= _edge_set(ei)
    counts = torch.bincount(glob[1], minlength=g.num_nodes)[seeds]
    assert torch.equal(counts, torch.where(g.degree()[seeds] > 0, 6, 0))


def test_uniformity_chi_square() -> None:
    """Each of a hub's 20 in-neighbours is drawn equally often (10^4+ draws, chi-square)."""
    hubs, leaves, f = 600, 20, 3
    # hub h (id h) has in-neighbours hubs + h*leaves + j, j = 0..leaves-1 (a forest of stars)
    h = torch.arange(hubs).repeat_interleave(leaves)
    j = torch.arange(leaves).repeat(hubs)
    ei = torch.stack([hubs + h * leaves + j, h])
    g = csr_from_edge_index(ei, hubs * (leaves + 1))
    s = NeighborSampler(g, [f], generator=torch.Generator().manual_seed(0))
    counts = torch.zeros(leaves)
    for _ in range(6):  # 6 * 600 * 3 = 10,800 draws
        sub = s.sample(torch.arange(hubs))
        src = sub.n_id[sub.edge_index[0]]
        counts += torch.bincount((src - hubs) % leaves, minlength=leaves).float()
    assert int(counts.sum()) == 6 * hubs * f
    expected = counts.sum() / leaves
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.82, chi2  # chi-square(19 dof) upper 0.001 quantile: p > 0.001


def test_sampler_errors() -> None:
    g, _ = _graph(50)
    with pytest.raises(ValueError, match="fan-out"):
        NeighborSampler(g, [0])
    with pytest.raises(ValueError, match="at least one hop"):
        NeighborSampler(g, [])
    s = NeighborSampler(g, [2])
    with pytest.raises(ValueError, match="distinct"):
        s.sample(torch.tensor([1, 1]))
    with pytest.raises(IndexError):
        s.sample(torch.tensor([50]))
    with pytest.raises(TypeError):
        s.sample(torch.tensor([1.0]))
    assert int(s._local.max()) == -1  # failed calls leave the map clean
