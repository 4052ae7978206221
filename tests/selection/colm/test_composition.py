"""Small-source detection and per-source quotas with the exact remainder rule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcraft.selection.colm import keep_mask, small_sources_from_counts, source_budgets

SIZES = (20000, 8000, 3000, 1000, 400, 150, 80, 40)


def test_small_sources_mean_rule_on_spec_sizes():
    assert small_sources_from_counts(torch.tensor(SIZES)) == {2, 3, 4, 5, 6, 7}
    assert small_sources_from_counts(dict(enumerate(SIZES))) == {2, 3, 4, 5, 6, 7}


def test_small_sources_numeric_rule():
    total = sum(SIZES)
    # count < total / 100 = 326.7 -> sources 5, 6, 7
    assert small_sources_from_counts(torch.tensor(SIZES), rule=100) == {5, 6, 7}
    assert small_sources_from_counts(torch.tensor(SIZES), rule=total / 2999.5) == {3, 4, 5, 6, 7}


@pytest.mark.parametrize(
    ("counts", "rule", "match"),
    [
        ({}, "mean", "empty"),
        ({0: -1}, "mean", "non-negative"),
        ({0: 1}, "median", "rule must"),
        ({0: 1}, 0.0, "> 0"),
        (torch.ones(2, 2), "mean", "1-D"),
    ],
    ids=["empty", "negative", "bad-rule", "zero-rule", "2d"],
)
def test_small_sources_errors(counts, rule, match):
    with pytest.raises(ValueError, match=match):
        small_sources_from_counts(counts, rule=rule)


def test_small_sources_type_error():
    with pytest.raises(TypeError, match="Mapping"):
        small_sources_from_counts([1, 2, 3])  # type: ignore[arg-type]


def test_budgets_hand_example():
    # n = (5, 3, 2), budget 4 over N' = 10: floors (2, 1, 0), r = 1 -> source 2 (b=0) gets it
    src = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    assert source_budgets(src, 4) == {0: 2, 1: 1, 2: 1}
    # budget 7: floors (3, 2, 1), r = 1 -> lowest b_q is source 2
    assert source_budgets(src, 7) == {0: 3, 1: 2, 2: 2}
    assert source_budgets(src, 10) == {0: 5, 1: 3, 2: 2}
    assert source_budgets(src, 0) == {0: 0, 1: 0, 2: 0}


def _reference(sources: list[int], budget: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    n = len(sources)
    b = {q: c * budget // n for q, c in counts.items()}
    r = budget - sum(b.values())
    while r > 0:
        for q in sorted(b, key=lambda s: (b[s], s)):
            if r and b[q] < counts[q]:
                b[q] += 1
                r -= 1
    return b


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.integers(0, 7), min_size=1, max_size=80),
    st.floats(0.0, 1.0),
)
def test_budgets_properties(sources, frac):
    src = torch.tensor(sources)
    budget = round(frac * len(sources))
    b = source_budgets(src, budget)
    counts = {q: sources.count(q) for q in set(sources)}
    assert sum(b.values()) == budget
    assert set(b) == set(counts)
    for q, bq in b.items():
        floor = counts[q] * budget // len(sources)
        assert floor <= bq <= counts[q]
        assert bq - floor <= 1 + len(counts)  # remainder spread, never piled up
    assert b == _reference(sources, budget)


def test_budgets_errors():
    with pytest.raises(ValueError, match=r"budget must be in \[0, 3\]"):
        source_budgets(torch.tensor([0, 1, 1]), 4)
    with pytest.raises(ValueError, match="1-D"):
        source_budgets(torch.zeros(2, 2, dtype=torch.long), 1)


def test_keep_mask():
    src = torch.tensor([0, 3, 5, 3, 1])
    assert keep_mask(src, {3, 5}).tolist() == [False, True, True, True, False]
    assert not keep_mask(src, set()).any()


def test_small_rule_is_strictly_below_the_mean():
    # counts (6, 2, 4): mean 4, so only source 1 is small; source 2 sits exactly at the mean
    assert small_sources_from_counts({0: 6, 1: 2, 2: 4}) == {1}
    # numeric rule c: count < total / c; total 12, c = 3 -> threshold 4, again strict
    assert small_sources_from_counts({0: 6, 1: 2, 2: 4}, rule=3) == {1}
