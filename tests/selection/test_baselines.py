"""Per-sample selection baselines: definitions checked against their one-line formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcraft.selection.baselines import (
    OnlineBatchSelectionSampler,
    SelectiveBackprop,
    rank_based_probs,
    reducible_loss_select,
    topk_in_batch_loss,
)


# ---------------------------------------------------------------------------------- OBS
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=50), st.floats(1.0, 1e4))
def test_rank_probs_sum_ratio_and_order(values, pressure):
    scores = torch.tensor(values, dtype=torch.float64)
    p = rank_based_probs(scores, pressure)
    n = len(values)
    assert abs(float(p.sum()) - 1.0) < 1e-12
    order = torch.sort(scores, descending=True, stable=True).indices
    by_rank = p[order]
    assert torch.all(by_rank[:-1] >= by_rank[1:])  # higher loss, higher probability
    assert math.isclose(float(by_rank[0] / by_rank[-1]), pressure ** ((n - 1) / n), rel_tol=1e-9)


def test_rank_probs_uniform_at_pressure_one_and_indexing():
    p = rank_based_probs(torch.tensor([0.1, 0.7, 0.3]), 1.0)
    assert torch.allclose(p, torch.full((3,), 1 / 3, dtype=torch.float64))
    p = rank_based_probs(torch.tensor([0.1, 0.7, 0.3]), 8.0)
    # ranks: sample 1 -> 0, sample 2 -> 1, sample 0 -> 2; p_r ∝ 8^(-r/3) = 2^-r
    assert torch.allclose(p, torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64) / 7)


def test_rank_probs_errors():
    with pytest.raises(ValueError, match=">= 1"):
        rank_based_probs(torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        rank_based_probs(torch.ones(0), 2.0)


def test_obs_sampler_first_epoch_is_a_permutation_then_follows_ranks():
    s = OnlineBatchSelectionSampler(
        40, 8, pressure=1000.0, generator=torch.Generator().manual_seed(0)
    )
    first = list(s)
    assert len(first) == len(s) == 5
    assert sorted(x for b in first for x in b) == list(range(40))
    s.record(torch.arange(40), torch.arange(40, dtype=torch.float64))  # sample 39 hardest
    counts = torch.zeros(40)
    for _ in range(30):
        for batch in s:
            assert len(set(batch)) == 8  # without replacement inside a batch
            counts[batch] += 1
    assert counts[-8:].sum() > 3 * counts[:8].sum()


def test_obs_sampler_empirical_frequencies_match_probs():
    g = torch.Generator().manual_seed(1)
    s = OnlineBatchSelectionSampler(5, 1, pressure=16.0, generator=g)
    list(s)
    s.record(list(range(5)), torch.tensor([0.0, 4.0, 2.0, 3.0, 1.0]))
    counts = torch.zeros(5)
    for _ in range(2000):
        for batch in s:
            counts[batch] += 1
    expected = rank_based_probs(s.scores, 16.0) * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # 4 dof, p = 0.001


def test_obs_state_round_trip_and_recompute():
    s = OnlineBatchSelectionSampler(20, 4, recompute_every=2)
    list(s)
    s.record([0, 1], torch.tensor([1.0, 2.0]))
    assert not s.recompute_due
    list(s)
    assert s.recompute_due
    t = OnlineBatchSelectionSampler(20, 4, recompute_every=2)
    t.load_state_dict(s.state_dict())
    assert list(s) == list(t)
    with pytest.raises(ValueError, match="shape"):
        s.set_scores(torch.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        s.record([0], torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="batch_size"):
        OnlineBatchSelectionSampler(3, 4)


# ---------------------------------------------------------------------------------- SB
def test_selective_backprop_keep_probability_is_cdf_power():
    sb = SelectiveBackprop(4, beta=2.0, history=4)
    for v in (1.0, 2.0, 3.0):
        sb.keep_probability(v)
    # history {1, 2, 3, 4}: F(4) = 1, then each new loss replaces the oldest.
    assert sb.keep_probability(4.0) == 1.0
    assert sb.keep_probability(2.0) == pytest.approx((2 / 4) ** 2)  # {2,3,4,2}: 2 of 4 are <= 2


def test_selective_backprop_keep_rate_chi_square():
    # A cyclic stream 1,2,3,4 with R = 4 keeps the history at {1,2,3,4}: F(l) = l/4, keep (l/4)^2.
    sb = SelectiveBackprop(10**6, beta=2.0, history=4, generator=torch.Generator().manual_seed(0))
    sb.offer(torch.zeros(4, 1), torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))  # warm
    n_per = 2500
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(n_per)
    x = losses[:, None].clone()
    sb.offer(x, losses.clone(), losses)
    kept = torch.cat(sb._inputs).flatten()
    chi2 = 0.0
    for level in (1, 2, 3, 4):
        p = (level / 4) ** 2
        k = int((kept == level).sum())
        for obs, exp in ((k, n_per * p), (n_per - k, n_per * (1 - p))):
            if exp > 0:
                chi2 += (obs - exp) ** 2 / exp
    assert chi2 < 16.27  # 3 dof (level 4 is certain), p = 0.001


def test_selective_backprop_emits_full_batches_of_kept_samples():
    sb = SelectiveBackprop(3, beta=1.0, history=8, generator=torch.Generator().manual_seed(0))
    out = []
    for step in range(20):
        x = torch.arange(4, dtype=torch.float32)[:, None] + 10 * step
        batch = sb.offer(
            x, x[:, 0].long(), torch.rand(4, generator=torch.Generator().manual_seed(step))
        )
        if batch is not None:
            assert batch.inputs.shape == (3, 1) and batch.targets.shape == (3,)
            out.append(batch.inputs.flatten())
    assert out and sb.kept == len(out) * 3 + sb.pending
    flat = torch.cat(out)
    assert torch.all(flat[1:] > flat[:-1])  # stream order is kept
    with pytest.raises(ValueError, match="same leading size"):
        sb.offer(torch.zeros(2, 1), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        SelectiveBackprop(3, beta=0.0)


# ---------------------------------------------------------------------------------- others
@pytest.mark.parametrize(("ratio", "k"), [(0.5, 5), (0.25, 3), (1.0, 10), (0.01, 1)])
def test_topk_in_batch_loss_is_mean_of_sorted_topk(ratio, k):
    losses = torch.rand(10, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = topk_in_batch_loss(losses, ratio)
    assert torch.allclose(out, losses.sort(descending=True).values[:k].mean())
    out.backward()
    assert int((losses.grad != 0).sum()) == k  # gradient only through the kept samples


def test_topk_in_batch_loss_errors():
    with pytest.raises(ValueError, match="ratio"):
        topk_in_batch_loss(torch.ones(4), 0.0)
    with pytest.raises(ValueError, match="1-D"):
        topk_in_batch_loss(torch.ones(2, 2))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=30), st.data()
)
def test_reducible_loss_select_is_topk_of_difference(pairs, data):
    k = data.draw(st.integers(1, len(pairs)))
    loss = torch.tensor([float(a) for a, _ in pairs])
    irr = torch.tensor([float(b) for _, b in pairs])
    diff = [a - b for a, b in pairs]
    want = sorted(sorted(range(len(diff)), key=lambda i: (-diff[i], i))[:k])
    assert reducible_loss_select(loss, irr, k).tolist() == want


def test_reducible_loss_select_errors():
    with pytest.raises(ValueError, match="must both be"):
        reducible_loss_select(torch.ones(3), torch.ones(4), 1)
