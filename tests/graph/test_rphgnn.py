"""RpHGNN: projection kernel statistics, even-odd pre-computation vs dense reference, encoder, learning."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from batchcraft.graph.hetero import HeteroGraph, naive_mean_propagate
from batchcraft.graph.rphgnn import (
    naive_rphgnn_precompute,
    random_projection,
    row_normalize,
    rphgnn_group_keys,
    rphgnn_precompute,
)
from batchcraft.graph.rphgnn_baselines import metapath_count, relation_wise_precompute
from batchcraft.graph.rphgnn_model import HopMixer, RpHGNN, f1_scores


def _edges(pairs):
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def three_type_graph() -> HeteroGraph:
    """paper (target, 4 nodes, features), author (3, featureless), venue (2, features)."""
    g = torch.Generator().manual_seed(3)
    return HeteroGraph(
        x_dict={
            "paper": torch.randn(4, 3, generator=g, dtype=torch.float64),
            "author": None,
            "venue": torch.randn(2, 2, generator=g, dtype=torch.float64),
        },
        edge_index_dict={
            ("paper", "by", "author"): _edges([(0, 0), (1, 0), (1, 1), (2, 1)]),  # paper 3: none
            ("author", "wrote", "paper"): _edges([(0, 0), (0, 1), (1, 1), (1, 2)]),  # transpose
            ("paper", "in", "venue"): _edges([(0, 0), (1, 0), (2, 1), (3, 1)]),
            ("paper", "cites", "paper"): _edges([(0, 1), (1, 2)]),
        },
        num_nodes_dict={"paper": 4, "author": 3, "venue": 2},
    )


# ---------------------------------------------------------------- projection kernel


def test_sparse_kernel_entries_and_sparsity():
    s, n = 3.0, 200 * 300
    p = random_projection(
        200, 300, s=s, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    vals = set(torch.unique(p).tolist())
    assert vals <= {-math.sqrt(s), 0.0, math.sqrt(s)}
    frac = float((p != 0).float().mean())
    sd = math.sqrt((1 / s) * (1 - 1 / s) / n)
    assert abs(frac - 1 / s) < 4 * sd
    assert abs(float((p > 0).float().mean()) - 1 / (2 * s)) < 4 * sd
    gram = (p @ p.t() / 300).float()  # E[P Pᵀ] / k = I
    assert float((gram - torch.eye(200)).abs().mean()) < 0.1
    assert abs(float(gram.diagonal().mean()) - 1) < 0.02


def test_projection_deterministic_by_generator_and_global_rng_untouched():
    before = torch.random.get_rng_state()
    a = random_projection(5, 7, generator=torch.Generator().manual_seed(4))
    b = random_projection(5, 7, generator=torch.Generator().manual_seed(4))
    c = random_projection(5, 7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("s", [1.0, 3.0], ids=["s1", "s3"])
def test_inner_products_preserved_with_predicted_variance(s):
    gen = torch.Generator().manual_seed(11)
    d, k, draws = 6, 16, 3000
    x = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5, 1.0], dtype=torch.float64)
    y = torch.tensor([0.5, 1.0, -1.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    vals = torch.empty(draws, dtype=torch.float64)
    for i in range(draws):
        p = random_projection(d, k, s=s, generator=gen, dtype=torch.float64)
        vals[i] = (x @ p) @ (y @ p) / k
    xy, xx, yy = float(x @ y), float(x @ x), float(y @ y)
    var = (xx * yy + xy**2 + (s - 3) * float((x**2 * y**2).sum())) / k
    assert abs(float(vals.mean()) - xy) < 3 * math.sqrt(var / draws)
    assert abs(float(vals.var()) / var - 1) < 0.1


def test_gaussian_kernels_scale():
    g = torch.Generator().manual_seed(0)
    p = random_projection(300, 100, kernel="gaussian", generator=g)
    assert abs(float(p.var()) / (2 / 400) - 1) < 0.05
    q = random_projection(300, 100, kernel="gaussian_no_norm", generator=g)
    assert abs(float(q.var()) - 1) < 0.05


def test_projection_errors():
    with pytest.raises(ValueError, match="kernel"):
        random_projection(2, 2, kernel="dense")
    with pytest.raises(ValueError, match="s must be"):
        random_projection(2, 2, s=0.5)
    with pytest.raises(ValueError, match="positive"):
        random_projection(0, 2)


def test_row_normalize_unit_rows_zero_rows_stay_zero():
    y = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    out = row_normalize(y)
    assert torch.allclose(out.norm(dim=1), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(out[1], torch.zeros(2))


def test_squashed_inner_product_estimates_sum_of_cosines():
    """E⟨S(u), S(v)⟩ ≈ Σ_r cos(h_r(u), h_r(v)) with independent P per relation."""
    gen = torch.Generator().manual_seed(2)
    h = [torch.randn(2, 8, generator=gen, dtype=torch.float64) for _ in range(3)]
    cos = sum(float(torch.nn.functional.cosine_similarity(t[0], t[1], dim=0)) for t in h)
    est = []
    for _ in range(1500):
        sq = sum(
            row_normalize(t @ random_projection(8, 64, generator=gen, dtype=torch.float64))
            for t in h
        )
        est.append(float(sq[0] @ sq[1]))
    assert abs(sum(est) / len(est) - cos) < 0.05


# ---------------------------------------------------------------- pre-computation


def _run(fn, graph, **kw):
    kw.setdefault("num_iterations", 3)
    return fn(
        graph.x_dict, graph.edge_index_dict, graph.num_nodes_dict, "paper",
        embedding_size=5, generator=torch.Generator().manual_seed(7),
        storage_dtype=torch.float64, compute_dtype=torch.float64, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("kernel", ["sparse", "gaussian", "gaussian_no_norm"])
@pytest.mark.parametrize("even_odd", ["all", "odd", "even"])
@pytest.mark.parametrize("use_input", [True, False], ids=["input", "no-input"])
def test_precompute_equals_naive(kernel, even_odd, use_input):
    g = three_type_graph()
    kw = dict(kernel=kernel, even_odd=even_odd, use_input=use_input, add_self_group=True)
    fast = _run(rphgnn_precompute, g, chunk_rows=3, **kw)
    ref = _run(naive_rphgnn_precompute, g, **kw)
    assert list(fast) == list(ref)
    for key in ref:
        torch.testing.assert_close(fast[key], ref[key], rtol=0, atol=1e-10, msg=key)


def test_chunked_equals_unchunked_and_dispatch():
    g = three_type_graph()
    a = _run(rphgnn_precompute, g, chunk_rows=None)
    b = _run(rphgnn_precompute, g, chunk_rows=1)
    c = _run(rphgnn_precompute, g, impl="naive")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-12)
        torch.testing.assert_close(a[key], c[key], rtol=0, atol=1e-10)


def test_first_iteration_is_the_dense_even_odd_formula():
    """k = 0 terms: O = D⁻¹A X_src and E = D⁻¹A (D⁻¹Aᵀ X_τ), written out with dense matrices."""
    g = three_type_graph()
    out = _run(rphgnn_precompute, g, num_iterations=1, use_input=True)
    xp, xv = g.x_dict["paper"], g.x_dict["venue"]
    in_venue = g.edge_index_dict[("paper", "in", "venue")]
    odd_v = naive_mean_propagate(in_venue.flip(0), xv, 4)  # venue → paper
    even_v = naive_mean_propagate(in_venue.flip(0), naive_mean_propagate(in_venue, xp, 2), 4)
    torch.testing.assert_close(out["odd:paper__in__venue"][:, 0], odd_v)
    torch.testing.assert_close(out["even:paper__in__venue"][:, 0], xp)  # use_input first
    torch.testing.assert_close(out["even:paper__in__venue"][:, 1], even_v)
    cites = g.edge_index_dict[("paper", "cites", "paper")]
    sym = torch.cat([cites, cites.flip(0)], dim=1)
    odd_c = naive_mean_propagate(sym, xp, 4)
    torch.testing.assert_close(out["odd:paper__cites__paper"][:, 0], odd_c)
    torch.testing.assert_close(
        out["even:paper__cites__paper"][:, 1], naive_mean_propagate(sym, odd_c, 4)
    )
    # paper 3 has no author: its odd author term is zero
    assert torch.equal(out["odd:author__wrote__paper"][3, 0], torch.zeros(5, dtype=torch.float64))


def test_group_count_depth_and_width_rules():
    g = three_type_graph()
    K = 4
    out = _run(rphgnn_precompute, g, num_iterations=K, use_input=True, add_self_group=True)
    raw_incident = 3  # author-paper (transposed pair kept once), paper-venue, paper-cites
    assert len(out) == 2 * raw_incident + 1
    assert list(out) == rphgnn_group_keys(
        g.edge_index_dict, g.num_nodes_dict, "paper", add_self_group=True
    )
    for key, t in out.items():
        if key == "self":
            assert t.shape == (4, 1, 3)
        elif key.startswith("even:"):
            assert t.shape == (4, K + 1, 3)  # own width d_τ, X⁽⁰⁾ prepended
        else:
            assert t.shape[1] == K
    assert out["odd:author__wrote__paper"].shape[2] == 5  # featureless author: width e
    assert out["odd:paper__in__venue"].shape[2] == 2


def test_storage_linear_in_K_while_metapaths_grow_geometrically():
    g = three_type_graph()
    stored = [
        sum(t.numel() for t in _run(rphgnn_precompute, g, num_iterations=k).values())
        for k in range(1, 7)
    ]
    diffs = [b - a for a, b in itertools.pairwise(stored)]
    assert len(set(diffs)) == 1 and diffs[0] > 0  # exactly linear
    paths = [metapath_count(g.edge_index_dict, g.num_nodes_dict, "paper", k) for k in range(1, 7)]
    assert all(b / a > 1.8 for a, b in itertools.pairwise(paths[1:]))  # geometric
    rw = relation_wise_precompute(
        g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper", num_hops=3, embedding_size=5,
        include_self=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert len(rw) == paths[2]


def test_same_generator_same_output_different_seed_differs():
    g = three_type_graph()
    a, b = _run(rphgnn_precompute, g), _run(rphgnn_precompute, g)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = rphgnn_precompute(
        g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper", embedding_size=5,
        generator=torch.Generator().manual_seed(8), storage_dtype=torch.float64,
    )  # fmt: skip
    assert not torch.allclose(
        a["odd:author__wrote__paper"][:, 1], c["odd:author__wrote__paper"][:, 1].double()
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_storage_dtype(dtype):
    g = three_type_graph()
    out = rphgnn_precompute(
        g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper", embedding_size=5,
        generator=torch.Generator().manual_seed(7), storage_dtype=dtype,
    )  # fmt: skip
    ref = _run(rphgnn_precompute, g)
    for k, t in out.items():
        assert t.dtype == dtype
        torch.testing.assert_close(t.double(), ref[k], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"target": "nope"}, "target"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"kernel": "x"}, "kernel"),
        ({"even_odd": "both"}, "even_odd"),
        ({"impl": "fast"}, "impl"),
    ],
    ids=["target", "K0", "kernel", "even_odd", "impl"],
)
def test_precompute_errors(kw, match):
    g = three_type_graph()
    target = kw.pop("target", "paper")
    with pytest.raises(ValueError, match=match):
        rphgnn_precompute(g.x_dict, g.edge_index_dict, g.num_nodes_dict, target, **kw)


# ---------------------------------------------------------------- encoder and metrics


def test_hop_mixer_equals_einsum_reference():
    m = HopMixer(3, 2)
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0]))
    z = torch.randn(4, 3, 5)
    ref = torch.stack(
        [sum(m.weight[f, i] * z[:, i] for i in range(3)) + m.bias[f] for f in range(2)], 1
    )
    torch.testing.assert_close(m(z), ref.flatten(1))
    conv = torch.nn.Conv1d(3, 2, 1)  # the same map as a kernel-1 convolution over the hop axis
    with torch.no_grad():
        conv.weight.copy_(m.weight[:, :, None])
        conv.bias.copy_(m.bias)
    torch.testing.assert_close(m(z), conv(z).flatten(1))


def test_encoder_shapes_filters_and_prelu():
    shapes = {"odd:a": (3, 4), "even:a": (4, 6), "self": (1, 6)}
    for merge, width in [("concat", 3 * 8), ("mean", 8)]:
        model = RpHGNN(shapes, 8, 5, merge=merge, input_dropout=0.0, dropout=0.0)
        assert model.mixers["self"].weight.shape == (1, 1)  # F = 1 for depth-1 groups
        assert model.mixers["odd:a"].weight.shape == (2, 3)
        out = model({k: torch.randn(7, n, m) for k, (n, m) in shapes.items()})
        assert out.shape == (7, 5)
        assert model.output[0].in_features == width
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(
        p.weight.numel() == 1 and float(p.weight.detach()) == 0.25 for p in prelus
    )


def test_encoder_repr_is_stable():
    torch.manual_seed(0)
    model = RpHGNN({"odd:a": (2, 3)}, 4, 2, num_group_layers=1, num_output_layers=1)
    expected = (
        "RpHGNN(\n"
        "  (input_dropout): Dropout(p=0.8, inplace=False)\n"
        "  (mixers): ModuleDict(\n"
        "    (odd:a): HopMixer(hops=2, filters=2)\n"
        "  )\n"
        "  (group_mlps): ModuleDict(\n"
        "    (odd:a): Sequential(\n"
        "      (0): Linear(in_features=6, out_features=4, bias=True)\n"
        "      (1): PReLU(num_parameters=1)\n"
        "      (2): Dropout(p=0.7, inplace=False)\n"
        "    )\n"
        "  )\n"
        "  (output): Sequential(\n"
        "    (0): Linear(in_features=4, out_features=2, bias=True)\n"
        "  )\n"
        ")"
    )
    assert str(model) == expected


def test_encoder_errors():
    with pytest.raises(ValueError, match="merge"):
        RpHGNN({"a": (1, 2)}, 4, 2, merge="sum")
    with pytest.raises(ValueError, match="at least one"):
        RpHGNN({}, 4, 2)
    with pytest.raises(ValueError, match="missing"):
        RpHGNN({"a": (1, 2)}, 4, 2)({"b": torch.zeros(1, 1, 2)})


def test_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randint(4, (50,), generator=g), torch.randint(5, (50,), generator=g)
    micro, macro = f1_scores(pred, tgt)
    assert micro == pytest.approx(metrics.f1_score(tgt, pred, average="micro"))
    assert macro == pytest.approx(metrics.f1_score(tgt, pred, average="macro"))
    pm, tm = torch.randint(2, (40, 3), generator=g), torch.randint(2, (40, 3), generator=g)
    micro, macro = f1_scores(pm, tm, multilabel=True)
    assert micro == pytest.approx(metrics.f1_score(tm, pm, average="micro"))
    assert macro == pytest.approx(metrics.f1_score(tm, pm, average="macro", zero_division=0))
    with pytest.raises(ValueError, match="match"):
        f1_scores(pred, tgt[:3])


# ---------------------------------------------------------------- learning on the hetero SBM


@pytest.fixture(scope="module")
def sbm():
    from batchcraft.data.hetero_sbm import hetero_sbm

    return hetero_sbm(num_papers=1200, num_authors=600, generator=torch.Generator().manual_seed(0))


def _fit(data, method, K):
    from batchcraft.recipes.rphgnn import PRESETS, fit_node_classifier

    cfg = dataclasses.replace(PRESETS["hetero-sbm"], num_iterations=K, epochs=80, patience=20)
    return fit_node_classifier(data, method=method, config=cfg, seed=0)


def test_rphgnn_learns_sbm_where_mlp_is_at_chance(sbm):
    mlp = _fit(sbm, "mlp", 1)
    rp = _fit(sbm, "rphgnn", 3)
    assert mlp["test_micro"] <= 0.35
    assert rp["test_micro"] >= 0.90
    assert rp["test_file"] == "synthetic"


def test_two_iterations_beat_one_when_labels_need_two_hops(sbm):
    assert _fit(sbm, "rphgnn", 2)["test_micro"] > _fit(sbm, "rphgnn", 1)["test_micro"] + 0.03


def test_cli_rejects_bad_method_and_dataset(tmp_path):
    import typer
    from typer.testing import CliRunner

    from batchcraft.cli.graph_rphgnn import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "rphgnn" as a sub-command
    runner = CliRunner()
    res = runner.invoke(app, ["rphgnn", "--method", "gat", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "method" in res.output
    res = runner.invoke(
        app, ["rphgnn", "--dataset", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.json")]
    )
    assert res.exit_code == 2 and "Error" in res.output


def test_baseline_groups_shapes_and_relation_wise_first_hop():
    from batchcraft.graph.rphgnn_baselines import nars_precompute

    g = three_type_graph()
    args = (g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper")
    nars = nars_precompute(
        *args, num_hops=2, embedding_size=6, generator=torch.Generator().manual_seed(0)
    )
    assert list(nars) == ["hops"] and nars["hops"].shape == (4, 3, 6)
    rw = relation_wise_precompute(
        *args, num_hops=1, embedding_size=5, generator=torch.Generator().manual_seed(0),
        storage_dtype=torch.float64, compute_dtype=torch.float64,
    )  # fmt: skip
    assert len(rw) == 1 + metapath_count(g.edge_index_dict, g.num_nodes_dict, "paper", 1)
    in_venue = g.edge_index_dict[("paper", "in", "venue")]
    torch.testing.assert_close(
        rw["mp:venue__rev_in__paper"][:, 0],
        naive_mean_propagate(in_venue.flip(0), g.x_dict["venue"], 4),
    )
    with pytest.raises(ValueError, match="num_hops"):
        relation_wise_precompute(*args, num_hops=0)


def test_training_through_the_pinned_feature_store_matches_plain_tensors(sbm):
    pytest.importorskip("batchcraft.graph.feature_store")
    from batchcraft.recipes.rphgnn import PRESETS, fit_node_classifier, precompute_groups

    cfg = dataclasses.replace(PRESETS["hetero-sbm"], num_iterations=2, epochs=5, patience=5)
    groups = precompute_groups(sbm, "rphgnn", cfg, generator=torch.Generator().manual_seed(0))
    plain = fit_node_classifier(sbm, config=cfg, groups=groups)
    stored = fit_node_classifier(sbm, config=cfg, groups=groups, feature_store=True)
    assert plain["test_micro"] == stored["test_micro"] and plain["val_loss"] == stored["val_loss"]


# ---------------------------------------------------------------- official init, early stopping


def test_linear_layers_use_xavier_normal_weights_and_zero_bias():
    """The official code initialises every linear map with Xavier-normal weights and zero bias
    (torch's default would give uniform weights and non-zero biases)."""
    torch.manual_seed(0)
    model = RpHGNN({"odd:a": (3, 600), "even:a": (1, 400)}, 500, 300)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 2 + 2  # two per group MLP, hidden + classifier in the output
    for lin in linears:
        assert lin.bias is not None and not bool(lin.bias.any())
        w = lin.weight.detach()
        fan_out, fan_in = w.shape
        std = math.sqrt(2.0 / (fan_in + fan_out))
        # sample std of n normals is within 4 s.e. (std / sqrt(2n)) of the Xavier std
        assert abs(float(w.std()) - std) < 4 * std / math.sqrt(2 * w.numel())
        # and the weights are Gaussian, not uniform: kurtosis 3 (uniform would give 1.8)
        z = w.flatten() / w.std()
        assert abs(float((z**4).mean()) - 3.0) < 0.3
    for mixer in model.mixers.values():
        assert not bool(mixer.bias.any())


def _frozen_training(patience: int, val_every: int, epochs: int = 40) -> dict:
    """lr = 0: validation never improves after the first evaluation."""
    from batchcraft.recipes.rphgnn import RpHGNNTrainSettings, train_node_classifier

    g = torch.Generator().manual_seed(0)
    groups = {"g": torch.randn(60, 2, 5, generator=g)}
    y = torch.randint(0, 3, (60,), generator=g)
    model = RpHGNN({"g": (2, 5)}, 8, 3, input_dropout=0.0, dropout=0.0)
    cfg = RpHGNNTrainSettings(
        lr=0.0, epochs=epochs, patience=patience, batch_size=16, val_every=val_every
    )
    return train_node_classifier(
        model, groups, y, torch.arange(40), torch.arange(40, 50), torch.arange(50, 60),
        config=cfg, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("patience", "val_every", "stops_at"),
    [(3, 1, 5), (4, 2, 8), (0, 1, 2), (10, 10, 30)],
    ids=["p3", "p4-every2", "p0", "p10-every10"],
)
def test_early_stopping_fires_when_since_exceeds_patience(patience, val_every, stops_at):
    """Official rule: stop once the epochs without improvement exceed ``patience`` (``>``); the
    best epoch is the first evaluation, so training stops at ``val_every + (patience // val_every
    + 1) * val_every``."""
    rec = _frozen_training(patience, val_every)
    assert rec["best_epoch"] == val_every
    assert rec["epochs_run"] == stops_at


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_iterations", -1, r"num_iterations \(K\) must be an int >= 1, got -1"),
        ("num_iterations", 0, "num_iterations"),
        ("baseline_hops", -1, "baseline_hops must be an int >= 1"),
        ("hidden", 0, "hidden"),
        ("embedding_size", 2.5, "embedding_size"),
        ("epochs", 0, "epochs"),
        ("patience", -1, "patience must be an int >= 0"),
        ("dropout", 1.0, "dropout must be a probability"),
        ("lr", float("nan"), "lr must be a finite number"),
        ("merge", "sum", "merge must be one of"),
        ("kernel", "dense", "kernel must be one of"),
    ],
)
def test_config_validation(field, value, match):
    from batchcraft.recipes.rphgnn import PRESETS, RpHGNNConfig

    with pytest.raises(ValueError, match=match):
        RpHGNNConfig(**{field: value})
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["ACM"], **{field: value})


def test_train_config_and_library_validation():
    from batchcraft.graph.rphgnn_baselines import nars_precompute
    from batchcraft.recipes.rphgnn import RpHGNNTrainSettings

    for kw, match in [
        ({"epochs": 0}, "epochs"), ({"patience": -2}, "patience"), ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"), ({"val_every": 0}, "val_every"),
        ({"stop_on": "acc"}, "stop_on"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            RpHGNNTrainSettings(**kw)
    with pytest.raises(ValueError, match="hidden_channels"):
        RpHGNN({"a": (1, 2)}, 0, 2)
    with pytest.raises(ValueError, match="group_shapes"):
        RpHGNN({"a": (0, 2)}, 4, 2)
    g = three_type_graph()
    args = (g.x_dict, g.edge_index_dict, g.num_nodes_dict, "paper")
    with pytest.raises(ValueError, match="num_iterations"):
        rphgnn_precompute(*args, num_iterations=-1)
    with pytest.raises(ValueError, match="embedding_size"):
        rphgnn_precompute(*args, embedding_size=0)
    with pytest.raises(ValueError, match="num_hops"):
        nars_precompute(*args, num_hops=-1)
    with pytest.raises(ValueError, match="num_hops"):
        relation_wise_precompute(*args, num_hops=-1)
