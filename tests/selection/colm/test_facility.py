"""Facility location: naive reference == vectorised greedy, lazy == greedy, approximation bound."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from batchcraft.selection.colm import (
    cluster_weights,
    facility_location,
    facility_objective,
    l1_similarity,
)


def _sim(n: int, f: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return l1_similarity(torch.randn(n, f, generator=g, dtype=torch.float64))


def test_l1_similarity_properties():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = l1_similarity(x)
    d = (x[:, None] - x[None]).abs().sum(-1)
    torch.testing.assert_close(s, d.max() - d)
    assert torch.equal(s, s.T)
    assert (s >= 0).all()
    torch.testing.assert_close(s.diagonal(), torch.full((9,), float(d.max()), dtype=torch.float64))


@pytest.mark.parametrize(("n", "k"), [(1, 1), (7, 3), (33, 5), (60, 17)], ids=lambda v: str(v))
def test_greedy_equals_naive(n, k):
    s = _sim(n, 6, n)
    assert torch.equal(
        facility_location(s, k, impl="greedy"), facility_location(s, k, impl="naive")
    )


@pytest.mark.parametrize(("n", "k"), [(20, 4), (97, 13), (300, 40)], ids=lambda v: str(v))
def test_lazy_equals_greedy(n, k):
    s = _sim(n, 8, 100 + n)
    lazy, greedy = facility_location(s, k, impl="lazy"), facility_location(s, k, impl="greedy")
    assert torch.equal(lazy, greedy)  # continuous data: no exact ties
    assert facility_objective(s, lazy) == pytest.approx(facility_objective(s, greedy), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_bound_vs_brute_force(seed):
    n, k = 10, 3
    s = _sim(n, 4, seed)
    opt = max(facility_objective(s, torch.tensor(c)) for c in itertools.combinations(range(n), k))
    got = facility_objective(s, facility_location(s, k))
    assert got >= (1 - 1 / math.e) * opt - 1e-9
    assert got <= opt + 1e-9


def test_constant_shift_keeps_picks():
    s = _sim(25, 5, 3)
    assert torch.equal(facility_location(s, 6), facility_location(s + 3.7, 6))


def test_cluster_weights():
    s = _sim(30, 4, 7)
    sel = facility_location(s, 5)
    w = cluster_weights(s, sel)
    assert w.sum() == 30
    assert (w >= 1).all()  # medoids count themselves
    owner = s[:, sel].argmax(dim=1)
    assert torch.equal(w, torch.bincount(owner, minlength=5).to(w.dtype))


def test_facility_errors():
    with pytest.raises(ValueError, match="square"):
        facility_location(torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match=r"k must be in \[0, N=3\]"):
        facility_location(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match="non-negative"):
        facility_location(-torch.ones(3, 3), 1)
    with pytest.raises(ValueError, match="impl must be"):
        facility_location(torch.zeros(3, 3), 1, impl="fast")
    with pytest.raises(ValueError, match="2-D"):
        l1_similarity(torch.zeros(3))


# Independent pins: hand-computed picks, and asymmetric matrices (a symmetric S hides any mix-up of
# rows and columns, since every implementation then reads the same numbers either way).
HAND = torch.tensor([[5.0, 1.0, 0.0], [4.0, 2.0, 3.0], [0.0, 1.0, 6.0]])  # S[i, j]: j represents i


@pytest.mark.parametrize("impl", ["naive", "greedy", "lazy"])
def test_hand_computed_asymmetric_case(impl):
    # gains vs the empty set = column sums (9, 4, 9): tie -> first, pick 0; cur = (5, 4, 0).
    # then gains: j=1: 0 + 0 + 1 = 1, j=2: 0 + 0 + 6 = 6 -> pick 2. f = 5 + 4 + 6 = 15.
    picks = facility_location(HAND, 2, impl=impl)
    assert picks.tolist() == [0, 2]
    assert facility_objective(HAND, picks) == 15.0
    # rows 0, 1 are best represented by pick 0 (5 > 0, 4 > 3), row 2 by pick 2 (6 > 0)
    assert cluster_weights(HAND, picks).tolist() == [2.0, 1.0]


@pytest.mark.parametrize("seed", range(3))
def test_asymmetric_implementations_agree_with_brute_force_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(40, 40, generator=g, dtype=torch.float64)  # not symmetric
    # the greedy rule written out from the definition, one candidate at a time
    picks: list[int] = []
    for _ in range(6):

        def f(sel: list[int]) -> float:
            return float(s[:, sel].max(dim=1).values.sum()) if sel else 0.0

        gains = [f([*picks, j]) - f(picks) if j not in picks else -1.0 for j in range(40)]
        picks.append(max(range(40), key=lambda j: (gains[j], -j)))
    for impl in ("naive", "greedy", "lazy"):
        assert facility_location(s, 6, impl=impl).tolist() == picks, impl
