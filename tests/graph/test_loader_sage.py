"""Loader pipeline equivalence, GraphSAGE vs PyG, full-fan-out exactness, learning."""

from __future__ import annotations

import pytest
import torch

from batchcraft.data.graphs import planted_partition, powerlaw_graph
from batchcraft.graph import (
    GraphSAGE,
    NeighborLoader,
    PinnedFeatureStore,
    SAGEConv,
    csr_from_edge_index,
)
from batchcraft.recipes.sage import evaluate, train_epoch


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    d = powerlaw_graph(400, 6.0, num_features=12, num_classes=3, seed=1)
    return d, csr_from_edge_index(d.edge_index, d.num_nodes)


def _batches(loader: NeighborLoader) -> list:  # type: ignore[type-arg]
    return list(loader)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_equals_sequential(small, prefetch: int) -> None:  # type: ignore[no-untyped-def]
    d, g = small

    def run(pf: int) -> list:  # type: ignore[type-arg]
        gen = torch.Generator().manual_seed(4)
        store = PinnedFeatureStore(d.x, backend="staged")
        return _batches(
            NeighborLoader(g, store, d.y, [4, 3], batch_size=37, generator=gen, prefetch=pf)
        )

    seq, pip = run(0), run(prefetch)
    assert len(seq) == len(pip) == -(-400 // 37) >= 3
    for a, b in zip(seq, pip, strict=True):
        assert torch.equal(a.n_id, b.n_id) and torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert torch.equal(a.x, d.x[a.n_id]) and torch.equal(a.y, d.y[a.n_id[: a.batch_size]])
        assert set(a.timings) == {"sample", "gather", "transfer"}
    seeds = torch.cat([b.n_id[: b.batch_size] for b in seq])
    assert torch.equal(seeds.sort().values, torch.arange(400))  # one pass over every node


def test_loader_input_mask_drop_last_and_errors(small) -> None:  # type: ignore[no-untyped-def]
    d, g = small
    mask = torch.zeros(400, dtype=torch.bool)
    mask[::3] = True
    loader = NeighborLoader(g, d.x, d.y, [2], batch_size=50, input_nodes=mask, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 134 // 50
    assert all(bool(mask[b.n_id[: b.batch_size]].all()) for b in batches)
    with pytest.raises(ValueError, match="one row per"):
        NeighborLoader(g, d.x[:10], d.y, [2])


def test_loader_rejects_float_and_out_of_range_seed_ids(small) -> None:  # type: ignore[no-untyped-def]
    """A float id (2.7) is not a node: it must not be truncated to 2 silently."""
    d, g = small
    with pytest.raises(TypeError, match="integer node ids"):
        NeighborLoader(g, d.x, d.y, [2], input_nodes=torch.tensor([0.0, 2.7, 5.0]))
    with pytest.raises(TypeError, match="integer node ids"):
        NeighborLoader(g, d.x, d.y, [2], input_nodes=torch.arange(4, dtype=torch.float16))
    with pytest.raises(TypeError, match="tensor of int node ids"):
        NeighborLoader(g, d.x, d.y, [2], input_nodes=[0, 1, 2])  # type: ignore[arg-type]
    with pytest.raises(IndexError, match=r"\[0, 400\)"):
        NeighborLoader(g, d.x, d.y, [2], input_nodes=torch.tensor([0, 400]))
    with pytest.raises(ValueError, match="1-D"):
        NeighborLoader(g, d.x, d.y, [2], input_nodes=torch.zeros(2, 2, dtype=torch.long))
    ok = NeighborLoader(g, d.x, d.y, [2], input_nodes=torch.tensor([3, 1], dtype=torch.int32))
    assert sorted(b for batch in ok for b in batch.n_id[: batch.batch_size].tolist()) == [1, 3]
    with pytest.raises(ValueError, match="batch_size"):
        NeighborLoader(g, d.x, d.y, [2], batch_size=0)


def test_loader_worker_error_propagates(small) -> None:  # type: ignore[no-untyped-def]
    d, g = small
    store = PinnedFeatureStore(d.x)
    loader = NeighborLoader(g, store, d.y, [2], batch_size=100, prefetch=2)
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(loader)


def test_sageconv_matches_pyg() -> None:
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=g)
    ei = torch.randint(0, 30, (2, 90), generator=g)
    ours = SAGEConv(7, 5)
    ref = pyg_nn.SAGEConv(7, 5, aggr="mean")
    with torch.no_grad():
        ref.lin_l.weight.copy_(ours.lin_l.weight)
        ref.lin_l.bias.copy_(ours.lin_l.bias)
        ref.lin_r.weight.copy_(ours.lin_r.weight)
    out, want = ours(x, ei), ref(x, ei)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(ours.lin_l.weight.grad, ref.lin_l.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.lin_r.weight.grad, ref.lin_r.weight.grad, rtol=1e-4, atol=1e-5)


def test_full_fanout_equals_full_graph(small) -> None:  # type: ignore[no-untyped-def]
    d, g = small
    model = GraphSAGE(12, 16, 3, num_layers=2).eval()
    full = model(d.x, d.edge_index)
    loader = NeighborLoader(g, d.x, d.y, [-1, -1], batch_size=64, shuffle=False, prefetch=0)
    for b in loader:
        seeds = b.n_id[: b.batch_size]
        trimmed = model(
            b.x,
            b.edge_index,
            num_sampled_nodes=b.num_sampled_nodes,
            num_sampled_edges=b.num_sampled_edges,
        )
        untrimmed = model(b.x, b.edge_index)[: b.batch_size]
        torch.testing.assert_close(trimmed, full[seeds], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(untrimmed, full[seeds], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="hops of sampling"):
        model(b.x, b.edge_index, num_sampled_nodes=[1, 2], num_sampled_edges=[3])


@pytest.mark.parametrize("backend", ["cpu", "staged", pytest.param("tensor", id="plain-tensor")])
def test_losses_identical_across_backends(small, backend: str) -> None:  # type: ignore[no-untyped-def]
    d, g = small

    def losses(feats) -> list[float]:  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = GraphSAGE(12, 16, 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(3)
        loader = NeighborLoader(g, feats, d.y, [5, 3], batch_size=64, generator=gen)
        return train_epoch(model, loader, opt).losses

    ref = losses(d.x)
    feats = d.x if backend == "tensor" else PinnedFeatureStore(d.x, backend=backend)
    assert losses(feats) == ref


def test_graphsage_learns_planted_partition() -> None:
    """Spec test 9: >= 0.90 test accuracy within 20 epochs (4 blocks x 500 nodes)."""
    d = planted_partition(4, 500, 0.05, 0.005, seed=0)
    g = csr_from_edge_index(d.edge_index, d.num_nodes)
    gen = torch.Generator().manual_seed(0)
    train = NeighborLoader(
        g, d.x, d.y, [10, 5], batch_size=64, input_nodes=d.train_idx, generator=gen
    )
    test = NeighborLoader(
        g, d.x, d.y, [-1, -1], batch_size=1000, input_nodes=d.test_idx, shuffle=False
    )
    torch.manual_seed(0)
    model = GraphSAGE(4, 32, 4, dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    accs = []
    for _ in range(20):
        train_epoch(model, train, opt)
        accs.append(evaluate(model, test))
        if accs[-1] >= 0.90:
            break
    assert accs[-1] >= 0.90, accs


@pytest.mark.data
def test_cora_graphsage_accuracy(data_dir) -> None:  # type: ignore[no-untyped-def]
    """Spec test 15: Planetoid split, >= 0.75 test accuracy (we measure about 0.80)."""
    from batchcraft.data.graphs import load_planetoid

    path = data_dir / "cora.zip"
    if not path.exists():
        pytest.skip("cora.zip absent")
    d = load_planetoid(path)
    g = csr_from_edge_index(d.edge_index, d.num_nodes)
    gen = torch.Generator().manual_seed(0)
    train = NeighborLoader(
        g, d.x, d.y, [10, 10], batch_size=35, input_nodes=d.train_idx, generator=gen
    )
    test = NeighborLoader(
        g, d.x, d.y, [-1, -1], batch_size=1000, input_nodes=d.test_idx, shuffle=False
    )
    torch.manual_seed(0)
    model = GraphSAGE(d.x.shape[1], 64, d.num_classes, dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    for _ in range(6):
        train_epoch(model, train, opt)
    assert evaluate(model, test) >= 0.75


def test_gcnconv_matches_pyg_and_trimming_is_exact(small) -> None:  # type: ignore[no-untyped-def]
    from batchcraft.graph.gcn import GCN, GCNConv

    pyg_nn = pytest.importorskip("torch_geometric.nn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=g)
    ei = torch.randint(0, 30, (2, 90), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ours, ref = GCNConv(7, 5), pyg_nn.GCNConv(7, 5)
    with torch.no_grad():
        ref.lin.weight.copy_(ours.lin.weight)
        assert ours.bias is not None
        ours.bias.normal_(generator=g)
        ref.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x, ei), ref(x, ei), rtol=1e-5, atol=1e-6)

    d, graph = small
    model = GCN(12, 16, 3).eval()
    loader = NeighborLoader(graph, d.x, d.y, [3, 2], batch_size=50, shuffle=False, prefetch=0)
    b = next(iter(loader))
    trimmed = model(b.x, b.edge_index, num_sampled_nodes=b.num_sampled_nodes,
                    num_sampled_edges=b.num_sampled_edges)  # fmt: skip
    torch.testing.assert_close(trimmed, model(b.x, b.edge_index)[: b.batch_size])
    with pytest.raises(ValueError, match="num_layers"):
        GCN(4, 4, 2, num_layers=0)
