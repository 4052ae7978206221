"""SeHGNN-style encoder: semantic fusion against a loop reference, shapes, gate, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from batchcraft.graph.sehgnn import SeHGNN, SemanticFusion, naive_semantic_fusion


def test_fusion_equals_loop_reference_and_its_gradients():
    torch.manual_seed(0)
    fusion = SemanticFusion(6, qk_dim=3).double()
    with torch.no_grad():
        fusion.beta.fill_(0.7)  # a non-zero gate, so the attention term counts
    h = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    out = fusion(h)
    ref = naive_semantic_fusion(fusion, h)
    torch.testing.assert_close(out, ref)
    g_out = torch.autograd.grad(out.square().sum(), [h, fusion.beta, fusion.query.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [h, fusion.beta, fusion.query.weight])
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_attention_rows_are_a_softmax_over_metapaths():
    """With W_V = I, b_V = 0 and β = 1 the output minus the input is a convex combination of the
    metapath representations (weights >= 0 summing to 1 per row)."""
    torch.manual_seed(1)
    fusion = SemanticFusion(4).double()
    with torch.no_grad():
        fusion.value.weight.copy_(torch.eye(4))
        fusion.value.bias.zero_()
        fusion.beta.fill_(1.0)
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    mix = fusion(h) - h  # [B, P, D] = α @ h
    alpha = torch.linalg.lstsq(h.transpose(1, 2), mix.transpose(1, 2)).solution  # [B, P, P]^T
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, 3, dtype=torch.float64))
    assert bool((alpha > -1e-9).all())


def test_gate_starts_closed_and_shapes():
    torch.manual_seed(0)
    shapes = {"self": (1, 7), "mp:a": (1, 5), "mp:a|b": (1, 3)}
    model = SeHGNN(shapes, 8, 4, input_dropout=0.0, dropout=0.0)
    assert float(model.fusion.beta.detach()) == 0.0  # training starts from plain concatenation
    assert model.fusion.query.out_features == 2  # D // 4
    h = torch.randn(5, 3, 8)
    torch.testing.assert_close(model.fusion(h), h)
    out = model({k: torch.randn(5, n, m) for k, (n, m) in shapes.items()})
    assert out.shape == (5, 4)
    assert model.output[0].in_features == 3 * 8  # concatenation of the fused metapaths
    for lin in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        assert not bool(lin.bias.detach().any())  # same init as RpHGNN: zero biases
    with pytest.raises(ValueError, match="missing"):
        model({"self": torch.randn(5, 1, 7)})
    with pytest.raises(ValueError, match="at least one"):
        SeHGNN({}, 8, 4)
    with pytest.raises(ValueError, match="hidden_channels"):
        SeHGNN(shapes, 0, 4)
    with pytest.raises(ValueError, match="qk_dim"):
        SemanticFusion(8, qk_dim=0)


def test_sehgnn_method_learns_the_sbm():
    from batchcraft.data.hetero_sbm import hetero_sbm
    from batchcraft.recipes.rphgnn import PRESETS, fit_node_classifier

    data = hetero_sbm(num_papers=800, num_authors=400, generator=torch.Generator().manual_seed(0))
    cfg = dataclasses.replace(PRESETS["hetero-sbm"], epochs=60, patience=15)
    rec = fit_node_classifier(data, method="sehgnn", config=cfg, seed=0)
    # metapaths of length 2 (paper-author-paper, paper-venue-paper) carry the label
    assert rec["test_micro"] >= 0.85
    assert rec["num_groups"] > 1
