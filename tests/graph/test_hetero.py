"""HeteroGraph container, relation canonicalisation and mean propagation vs the dense reference."""

from __future__ import annotations

import pytest
import torch

from batchcraft.graph.hetero import (
    HeteroGraph,
    canonicalize_relations,
    mean_propagate,
    naive_mean_propagate,
)


def _edges(pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def tiny_graph() -> HeteroGraph:
    """3 types (a: 4 nodes with features, b: 3 featureless, c: 2 with features)."""
    return HeteroGraph(
        x_dict={"a": torch.arange(8.0).view(4, 2), "b": None, "c": torch.ones(2, 3)},
        edge_index_dict={
            ("a", "ab", "b"): _edges([(0, 0), (1, 0), (2, 1), (2, 1)]),  # duplicate edge
            ("b", "ba", "a"): _edges([(0, 0), (0, 1), (1, 2)]),  # exact transpose of "ab"
            ("a", "aa", "a"): _edges([(0, 1), (1, 2)]),  # same-type, not symmetric
            ("c", "cb", "b"): _edges([(0, 2), (1, 2), (1, 0)]),
        },
        num_nodes_dict={"a": 4, "b": 3, "c": 2},
    )


def test_metadata_and_counts():
    g = tiny_graph()
    types, ets = g.metadata()
    assert types == ["a", "b", "c"]
    assert ets == sorted(g.edge_index_dict)
    assert g.num_edges() == 12


def test_num_nodes_inferred_from_features_and_edges():
    g = HeteroGraph({"a": torch.zeros(5, 1)}, {("a", "r", "b"): _edges([(4, 6)])})
    assert g.num_nodes_dict == {"a": 5, "b": 7}


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"x_dict": {"a": torch.zeros(3)}}, ValueError),
        ({"x_dict": {"a": torch.zeros(3, 2)}, "num_nodes_dict": {"a": 4}}, ValueError),
        ({"edge_index_dict": {("a", "r"): torch.zeros(2, 1, dtype=torch.long)}}, TypeError),
        ({"edge_index_dict": {("a", "r", "b"): torch.zeros(3, 1, dtype=torch.long)}}, ValueError),
        ({"edge_index_dict": {("a", "r", "b"): torch.zeros(2, 1)}}, TypeError),
        (
            {
                "edge_index_dict": {("a", "r", "b"): _edges([(0, 5)])},
                "num_nodes_dict": {"a": 1, "b": 2},
            },
            ValueError,
        ),
    ],
    ids=[
        "x-not-2d",
        "rows-mismatch",
        "etype-not-triple",
        "ei-3-rows",
        "ei-float",
        "id-out-of-range",
    ],
)
def test_container_errors(kwargs, err):
    with pytest.raises(err):
        HeteroGraph(**kwargs)


def test_canonicalize_dedups_transposes_symmetrises_and_adds_reverses_once():
    g = tiny_graph()
    rels, raw = canonicalize_relations(g.edge_index_dict, g.num_nodes_dict)
    assert sorted(raw) == ["a__aa__a", "a__ab__b", "c__cb__b"]  # "ba" dropped (transpose of "ab")
    assert raw["a__aa__a"] == (("a", "aa", "a"), ("a", "aa", "a"))  # own reverse
    assert raw["a__ab__b"] == (("a", "ab", "b"), ("b", "rev_ab", "a"))
    assert sorted(rels) == sorted(
        [
            ("a", "aa", "a"),
            ("a", "ab", "b"),
            ("b", "rev_ab", "a"),
            ("c", "cb", "b"),
            ("b", "rev_cb", "c"),
        ]
    )
    # binarised: the duplicate (2, 1) is gone
    assert rels[("a", "ab", "b")].shape[1] == 3
    # symmetrised same-type relation: union with its transpose
    sym = {tuple(e) for e in rels[("a", "aa", "a")].t().tolist()}
    assert sym == {(0, 1), (1, 0), (1, 2), (2, 1)}
    # reverse = transpose
    fwd = {tuple(e) for e in rels[("c", "cb", "b")].t().tolist()}
    rev = {tuple(e[::-1]) for e in rels[("b", "rev_cb", "c")].t().tolist()}
    assert fwd == rev


def test_canonicalize_keeps_non_transposed_pairs():
    ei = {("a", "x", "b"): _edges([(0, 0)]), ("b", "y", "a"): _edges([(1, 0)])}
    rels, raw = canonicalize_relations(ei, {"a": 2, "b": 2})
    assert sorted(raw) == ["a__x__b", "b__y__a"]
    assert len(rels) == 4


def test_canonicalize_rejects_clashing_reverse_name_and_unknown_types():
    ei = {("a", "x", "b"): _edges([(0, 0)]), ("b", "rev_x", "a"): _edges([(1, 1)])}
    with pytest.raises(ValueError, match="reverse"):
        canonicalize_relations(ei, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match="missing"):
        canonicalize_relations({("a", "x", "z"): _edges([(0, 0)])}, {"a": 1})


@pytest.mark.parametrize("chunk_rows", [None, 1, 2, 3, 1000], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_mean_propagate_equals_dense_reference(chunk_rows, dtype):
    gen = torch.Generator().manual_seed(0)
    num_src, num_dst, e = 7, 9, 23
    ei = torch.stack(
        [torch.randint(num_src, (e,), generator=gen), torch.randint(num_dst, (e,), generator=gen)]
    )
    x = torch.randn(num_src, 5, generator=gen, dtype=dtype)
    fast = mean_propagate(ei, x, num_dst, chunk_rows=chunk_rows)
    ref = naive_mean_propagate(ei, x, num_dst)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)


def test_mean_propagate_by_hand_and_zero_in_degree_rows():
    ei = _edges([(0, 0), (1, 0), (2, 2)])  # dst 1 has no in-neighbour
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    out = mean_propagate(ei, x, 3, chunk_rows=2)
    assert torch.equal(out, torch.tensor([[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))
    assert torch.equal(naive_mean_propagate(ei, x, 3), out)


def test_mean_propagate_half_precision_matches_fp32():
    gen = torch.Generator().manual_seed(1)
    ei = torch.randint(6, (2, 30), generator=gen)
    x = torch.randn(6, 4, generator=gen)
    out = mean_propagate(ei, x.half(), 6, chunk_rows=4)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), mean_propagate(ei, x, 6), rtol=1e-2, atol=1e-2)


def test_mean_propagate_errors():
    with pytest.raises(ValueError, match=r"\[N_s, F\]"):
        mean_propagate(_edges([(0, 0)]), torch.zeros(3), 1)
    with pytest.raises(ValueError, match="out of range"):
        mean_propagate(_edges([(5, 0)]), torch.zeros(3, 1), 1)
    with pytest.raises(ValueError, match="chunk_rows"):
        mean_propagate(_edges([(0, 0)]), torch.zeros(3, 1), 1, chunk_rows=0)


def test_pyg_round_trip():
    pytest.importorskip("torch_geometric")
    g = tiny_graph()
    data = g.to_pyg()
    assert set(data.node_types) == {"a", "b", "c"}
    back = HeteroGraph.from_pyg(data)
    assert back.num_nodes_dict == g.num_nodes_dict
    assert back.x_dict["b"] is None
    assert torch.equal(back.x_dict["a"], g.x_dict["a"])
    assert set(back.edge_index_dict) == set(g.edge_index_dict)
    for et, ei in g.edge_index_dict.items():
        assert torch.equal(back.edge_index_dict[et], ei)
