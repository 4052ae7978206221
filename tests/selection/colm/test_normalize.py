"""Selector-side Adam normalisation (hand recursion) and top-h sparsification."""

from __future__ import annotations

import pytest
import torch

from batchcraft.selection.colm import AdamFeatureNormalizer, colm_select, topk_mask


def test_adam_matches_hand_recursion_fp64():
    g = torch.Generator().manual_seed(0)
    b1, b2, eps = 0.9, 0.999, 1e-8
    norm = AdamFeatureNormalizer(6, betas=(b1, b2), eps=eps)
    m_prev = torch.zeros(6, dtype=torch.float64)
    v_prev = torch.zeros(6, dtype=torch.float64)
    for t in range(5):
        x = torch.randn(7, 6, generator=g, dtype=torch.float64)
        u, big_m, big_v = norm.transform(x)
        exp_m = b1 * m_prev + (1 - b1) * x
        exp_v = b2 * v_prev + (1 - b2) * x**2
        exp_u = (exp_m / (1 - b1 ** (t + 1))) / ((exp_v / (1 - b2 ** (t + 1))).sqrt() + eps)
        torch.testing.assert_close(u, exp_u, rtol=1e-12, atol=1e-12)
        picks = torch.tensor([t % 7, (t + 3) % 7])
        norm.commit(big_m[picks], big_v[picks])
        m_prev, v_prev = exp_m[picks].mean(0), exp_v[picks].mean(0)
        assert norm.t == t + 1
    torch.testing.assert_close(norm.m, m_prev)


def test_transform_does_not_change_state_and_empty_commit_is_noop():
    norm = AdamFeatureNormalizer(3)
    norm.transform(torch.randn(4, 3))
    assert norm.t == 0 and not norm.m.any()
    norm.commit(torch.zeros(0, 3), torch.zeros(0, 3))
    assert norm.t == 0


def test_state_dict_round_trip():
    norm = AdamFeatureNormalizer(4)
    _, m, v = norm.transform(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)))
    norm.commit(m[:2], v[:2])
    other = AdamFeatureNormalizer(4)
    other.load_state_dict(norm.state_dict())
    x = torch.randn(3, 4)
    for a, b in zip(norm.transform(x), other.transform(x), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        AdamFeatureNormalizer(5).load_state_dict(norm.state_dict())


def test_history_only_from_selected_big_rows():
    # kept rows carry huge features: they must not enter the moments
    feats = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    keep = torch.tensor([True, False, False, False])
    norm = AdamFeatureNormalizer(2)
    sel = colm_select(feats, 2, keep=keep, normalizer=norm)
    pick = int(sel.idx[1])
    exp_m = 0.1 * feats[pick].double()
    torch.testing.assert_close(norm.m, exp_m)


def test_normalised_and_raw_selection_differ_on_constructed_case():
    # Coordinate 0 had a huge historical second moment, so normalisation mutes it (~g0 / 816)
    # and coordinate 1 becomes sign(g1) * sqrt(1.5). Raw L1 is dominated by coordinate 0 and
    # splits {0, 1, 4} | {2, 3}; normalised L1 splits {0, 1, 2, 3} | {4}.
    feats = torch.tensor(
        [[0.0, 0.0], [0.2, 0.0], [10.0, 0.0], [10.2, 0.0], [0.1, 1.0]], dtype=torch.float64
    )
    norm = AdamFeatureNormalizer(2, betas=(0.0, 0.5))
    norm.m = torch.zeros(2, dtype=torch.float64)
    norm.v = torch.tensor([1e6, 0.0], dtype=torch.float64)
    norm.t = 1
    u, _, _ = norm.transform(feats)
    assert float(u[:, 0].abs().max()) < 0.02
    torch.testing.assert_close(u[4, 1], torch.tensor(1.5, dtype=torch.float64).sqrt())
    raw = colm_select(feats, 2)
    normed = colm_select(feats, 2, normalizer=norm)
    assert 4 not in raw.idx.tolist()
    assert {int(i) >= 2 for i in raw.idx if int(i) != 4} == {False, True}  # one per g0 cluster
    assert 4 in normed.idx.tolist()


def test_topk_mask():
    f = torch.tensor([[1.0, -5.0, 0.5, 2.0], [1.0, 5.0, 0.5, 2.0], [1.0, -3.0, -0.5, 2.0]])
    # |mean| = (1, 1, 0.1667, 2)
    assert topk_mask(f, 1).tolist() == [3]
    assert topk_mask(f, 2).tolist() == [0, 3]  # tie between 0 and 1 -> lower coordinate
    assert topk_mask(f, 3).tolist() == [0, 1, 3]
    assert topk_mask(f, 10).tolist() == [0, 1, 2, 3]
    assert f[:, topk_mask(f, 2)].shape == (3, 2)
    with pytest.raises(ValueError, match="h must be >= 1"):
        topk_mask(f, 0)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="betas"):
        AdamFeatureNormalizer(3, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        AdamFeatureNormalizer(3).transform(torch.zeros(2, 4))


@pytest.mark.parametrize("seed", range(5))
def test_topk_mask_equals_stable_sort_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randint(-3, 4, (4, 50), generator=g).double()  # many exact ties in |mean|
    imp = f.mean(0).abs()
    for h in (1, 7, 25, 49):
        ref = torch.sort(torch.sort(-imp, stable=True).indices[:h]).values
        assert torch.equal(topk_mask(f, h), ref)


def test_bias_correction_counts_commits_exact_for_a_stationary_stream():
    # A constant feature row g fed at every selection: after t commits the selector's moments are
    # m = (1 - b1^t) g and v = (1 - b2^t) g^2, so with t = commits the corrected ratio is exactly
    # U = g / (|g| + eps). A selection step that commits nothing (the kept examples fill the
    # coreset) must not advance t; counting it (the official code's global step) would scale U
    # by (1 - b1^4)(1 - b1^5)^-1 ... and break this identity.
    g = torch.tensor([[0.5, -2.0, 1e-3]], dtype=torch.float64)
    eps = 1e-8
    norm = AdamFeatureNormalizer(3, eps=eps)
    feats = g.repeat(6, 1)  # [6, 3], identical rows
    src = torch.tensor([0, 0, 0, 0, 1, 1])
    no_keep = torch.zeros(6, dtype=torch.bool)
    all_keep = torch.ones(6, dtype=torch.bool)
    expected = g / (g.abs() + eps)
    for step, keep in enumerate([no_keep, all_keep, no_keep, all_keep, all_keep, no_keep]):
        u, _, _ = norm.transform(feats)
        torch.testing.assert_close(u, expected.expand(6, 3), rtol=1e-12, atol=0)
        t_before = norm.t
        colm_select(feats, 3, sources=src, keep=keep, normalizer=norm)
        assert norm.t == t_before + (0 if keep.all() else 1), step
    assert norm.t == 3  # 6 selection steps, 3 of them committed


def test_picks_do_not_depend_on_the_bias_correction_step():
    # Within one selection every row shares t, so the correction is one positive scale of U
    # (up to eps): L1 facility location and the top-h mask, both scale-invariant, pick the same
    # rows whether t counts commits or optimizer steps. Hence the documented choice is harmless.
    g = torch.Generator().manual_seed(3)
    hist = AdamFeatureNormalizer(8)
    for _ in range(3):
        _, m, v = hist.transform(torch.randn(5, 8, generator=g, dtype=torch.float64))
        hist.commit(m, v)
    feats = torch.randn(30, 8, generator=g, dtype=torch.float64)
    src = torch.randint(0, 3, (30,), generator=g)
    picks = []
    ratios = []
    for t in (3, 7, 40):
        norm = AdamFeatureNormalizer(8)
        norm.load_state_dict({**hist.state_dict(), "t": t})
        ratios.append(norm.transform(feats)[0])
        picks.append(colm_select(feats, 9, sources=src, h=5, normalizer=norm).idx.tolist())
    assert picks[0] == picks[1] == picks[2]
    scale = ratios[0] / ratios[2]
    torch.testing.assert_close(scale, torch.full_like(scale, float(scale[0, 0])), rtol=1e-6, atol=0)


def test_normalise_then_sparsify_on_constructed_case():
    # Raw features: coordinate 0 dominates |mean| (4.08 vs 0.2). After normalisation with a huge
    # historical v on coordinate 0, |mean U| is ~0.005 there and sqrt(1.5) / 5 = 0.245 on
    # coordinate 1, so top-1 keeps coordinate 1, where only row 4 is non-zero: it must be picked.
    # Sparsifying first (mask from raw features) would keep coordinate 0 and never pick row 4.
    feats = torch.tensor(
        [[0.0, 0.0], [0.2, 0.0], [10.0, 0.0], [10.2, 0.0], [0.0, 1.0]], dtype=torch.float64
    )
    norm = AdamFeatureNormalizer(2, betas=(0.0, 0.5))
    norm.v = torch.tensor([1e6, 0.0], dtype=torch.float64)
    norm.t = 1
    assert topk_mask(feats, 1).tolist() == [0]
    assert topk_mask(norm.transform(feats)[0], 1).tolist() == [1]
    assert 4 in colm_select(feats, 2, h=1, normalizer=norm).idx.tolist()
