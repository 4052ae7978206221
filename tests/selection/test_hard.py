"""High-loss batch schedule, partition and sampler: the paper's schedule exactly, errors, state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcraft.selection.hard import (
    FixedBatchSampler,
    HighLossSchedule,
    fixed_partition,
    num_selected,
    select_hard,
    select_random,
)


def ref_top(scores: list[float], k: int) -> list[int]:
    """Python reference: k largest, ties to the lower index, ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


# ---------------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("scores", "k", "expected"),
    [
        ([3.0, 1.0, 3.0, 2.0], 2, [0, 2]),
        ([1.0, 1.0, 1.0, 1.0], 2, [0, 1]),
        ([0.3, 0.5, 0.5, 0.5], 2, [1, 2]),
        ([0.1, math.inf, 0.2, math.inf], 3, [1, 2, 3]),
        ([5.0], 1, [0]),
        ([-1.0, -2.0, -0.5], 1, [2]),
    ],
    ids=["simple", "all-tied", "tie-lower-index", "inf-first", "single", "negative"],
)
def test_select_hard_hand_cases(scores, k, expected):
    assert select_hard(torch.tensor(scores, dtype=torch.float64), k).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.data())
def test_select_hard_matches_python_reference(values, data):
    k = data.draw(st.integers(1, len(values)))
    scores = [v / 2 for v in values]  # many ties
    assert select_hard(torch.tensor(scores), k).tolist() == ref_top(scores, k)


def test_select_hard_errors():
    with pytest.raises(ValueError, match="NaN"):
        select_hard(torch.tensor([1.0, math.nan]), 1)
    with pytest.raises(ValueError, match=r"k \(3\) must be in \[1, N=2\]"):
        select_hard(torch.tensor([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="1-D"):
        select_hard(torch.zeros(2, 2), 1)


def test_select_random_distinct_sorted_seeded():
    a = select_random(50, 10, generator=torch.Generator().manual_seed(3))
    b = select_random(50, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.unique().numel() == 10 and torch.equal(a, a.sort().values)
    assert int(a.min()) >= 0 and int(a.max()) < 50


@pytest.mark.parametrize(
    ("b", "delta", "k"),
    [(44, 0.5, 22), (44, 1.0, 44), (10, 0.05, 1), (100, 0.29, 29), (7, 0.2, 1), (5, 0.4, 2)],
)
def test_num_selected(b, delta, k):
    assert num_selected(b, delta) == k


@pytest.mark.parametrize("delta", [0.0, -0.1, 1.01, math.nan, "0.5", None])
def test_invalid_delta_raises(delta):
    with pytest.raises(ValueError, match=r"delta must be a number in \(0, 1\]"):
        num_selected(10, delta)
    with pytest.raises(ValueError, match="delta"):
        HighLossSchedule(10, delta, 5)


# ---------------------------------------------------------------------------------- partition
def test_partition_contiguous_and_seeded():
    p = fixed_partition(10, 3, shuffle=False)
    assert p.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    a = fixed_partition(100, 7, generator=torch.Generator().manual_seed(1))
    b = fixed_partition(100, 7, generator=torch.Generator().manual_seed(1))
    c = fixed_partition(100, 7, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (14, 7) and a.flatten().unique().numel() == 98


def test_partition_keep_last_pads():
    p = fixed_partition(7, 3, shuffle=False, drop_last=False)
    assert p.tolist() == [[0, 1, 2], [3, 4, 5], [6, -1, -1]]
    assert list(FixedBatchSampler(p, [2, 0])) == [[6], [0, 1, 2]]


def test_partition_errors():
    with pytest.raises(ValueError, match="empty"):
        fixed_partition(0, 4)
    with pytest.raises(ValueError, match="no full batch"):
        fixed_partition(3, 4)
    with pytest.raises(ValueError, match="batch_size"):
        fixed_partition(3, 0)


# ---------------------------------------------------------------------------------- sampler
def test_sampler_yields_only_given_batches_in_order():
    p = fixed_partition(20, 4, generator=torch.Generator().manual_seed(0))
    s = FixedBatchSampler(p, torch.tensor([3, 1]))
    assert len(s) == 2 and list(s) == [p[3].tolist(), p[1].tolist()]


def test_sampler_shards_split_each_batch():
    p = fixed_partition(24, 6, shuffle=False)
    shards = [list(FixedBatchSampler(p, [0, 2], num_replicas=3, rank=r)) for r in range(3)]
    for j, i in enumerate([0, 2]):
        got = sorted(x for r in range(3) for x in shards[r][j])
        assert got == p[i].tolist()


def test_sampler_errors():
    p = fixed_partition(20, 4)
    with pytest.raises(ValueError, match=r"batch ids must lie in \[0, b=5\)"):
        FixedBatchSampler(p, [5])
    with pytest.raises(TypeError, match="int64 tensor"):
        FixedBatchSampler(p.float(), [0])
    with pytest.raises(ValueError, match="rank"):
        FixedBatchSampler(p, [0], num_replicas=2, rank=2)


# ---------------------------------------------------------------------------------- schedule
def drive(sched: HighLossSchedule, losses) -> list[list[int]]:
    """Run the schedule, recording ``losses(round, batch)``; returns the ids of each round."""
    out = []
    for r, ids in enumerate(sched.rounds()):
        out.append(ids.tolist())
        for i in ids.tolist():
            sched.record(i, losses(r, i))
    return out


def test_schedule_hand_computed():
    # b=5, delta=0.4 -> K=2, budget 12 steps: 5 + 2 + 2 + 2 + 1 (the last round is cut short).
    table = {
        0: [0.5, 0.9, 0.1, 0.9, 0.3],  # s = [.5 .9 .1 .9 .3]
        1: {1: 0.2, 3: 0.8},  # top2 {1, 3} (tie at .9)  -> s = [.5 .2 .1 .8 .3]
        2: {0: 0.4, 3: 0.4},  # top2 {3, 0} visited [0, 3] -> s = [.4 .2 .1 .4 .3]
        3: {0: 0.1, 3: 0.35},  # tie .4/.4 -> [0, 3]     -> s = [.1 .2 .1 .35 .3]
        4: {3: 1.0},  # top2 {3, 4}, cut to the 1 step left
    }
    sched = HighLossSchedule(5, 0.4, 12)
    rounds = drive(sched, lambda r, i: table[r][i])
    assert rounds == [[0, 1, 2, 3, 4], [1, 3], [0, 3], [0, 3], [3]]
    assert sched.steps_done == 12 and sched.round_index == 5 and sched.finished
    assert sched.scores.tolist() == [0.1, 0.2, 0.1, 1.0, 0.3]


def test_delta_one_is_every_batch_in_order():
    sched = HighLossSchedule(4, 1.0, 10)
    rounds = drive(sched, lambda r, i: float((r * 7 + i * 3) % 5))
    assert rounds == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 12),
    delta=st.floats(0.01, 1.0),
    steps=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_schedule_invariants(b, delta, steps, seed):
    g = torch.Generator().manual_seed(seed)
    sched = HighLossSchedule(b, delta, steps)
    k = max(1, math.floor(round(delta * b, 9)))
    total = 0
    for r, ids in enumerate(sched.rounds()):
        before = sched.scores.tolist()
        want = list(range(b)) if r == 0 else ref_top(before, k)
        assert ids.tolist() == want[: steps - total]
        for i in ids.tolist():
            sched.record(i, float(torch.randint(0, 4, (1,), generator=g)))
        after = sched.scores.tolist()
        untouched = set(range(b)) - set(ids.tolist())
        assert all(after[j] == before[j] for j in untouched)  # stale scores stay
        total += ids.numel()
    assert total == steps == sched.steps_done


def test_missing_record_raises_before_next_selection():
    sched = HighLossSchedule(4, 0.5, 20)
    it = sched.rounds()
    ids = next(it)
    sched.record(int(ids[0]), 1.0)
    with pytest.raises(RuntimeError, match="not recorded"):
        next(it)


def test_record_errors():
    sched = HighLossSchedule(4, 0.5, 20)
    it = sched.rounds()
    for i in next(it).tolist():
        sched.record(i, float(i))
    assert next(it).tolist() == [2, 3]
    with pytest.raises(ValueError, match="not in the current round"):
        sched.record(0, 1.0)
    sched.record(2, torch.tensor(0.5))
    with pytest.raises(ValueError, match="already recorded"):
        sched.record(2, 0.5)
    with pytest.raises(ValueError, match="finite"):
        sched.record(3, math.nan)


def test_schedule_config_errors():
    with pytest.raises(ValueError, match="num_steps"):
        HighLossSchedule(4, 0.5, 0)
    with pytest.raises(ValueError, match="refresh_every"):
        HighLossSchedule(4, 0.5, 5, refresh_every=0)
    with pytest.raises(ValueError, match="selector"):
        HighLossSchedule(4, 0.5, 5, selector="easy")


@pytest.mark.parametrize("selector", ["hard", "random"])
def test_state_dict_round_trip_mid_round(selector):
    def losses(r, i):
        return float((r * 13 + i * 7) % 11)

    def run(stop_at=None):
        s = HighLossSchedule(9, 0.34, 40, selector=selector,
                             generator=torch.Generator().manual_seed(5))  # fmt: skip
        seq = []
        for r, ids in enumerate(s.rounds()):
            for i in ids.tolist():
                if stop_at is not None and len(seq) == stop_at:
                    return s, seq
                s.record(i, losses(r, i))
                seq.append(i)
        return s, seq

    _, full = run()
    part, seq = run(stop_at=17)  # stops mid-round
    state = part.state_dict()
    resumed = HighLossSchedule(9, 0.34, 40, selector=selector)
    resumed.load_state_dict(state)
    r0 = resumed.round_index - 1
    for r, ids in enumerate(resumed.rounds(), start=r0):
        for i in ids.tolist():
            resumed.record(i, losses(r, i))
            seq.append(i)
    assert seq == full


def test_load_state_dict_mismatch():
    state = HighLossSchedule(9, 0.5, 40).state_dict()
    with pytest.raises(ValueError, match="delta"):
        HighLossSchedule(9, 0.25, 40).load_state_dict(state)


def test_refresh_required_and_applied():
    sched = HighLossSchedule(4, 0.5, 20, refresh_every=2)
    it = sched.rounds()
    for i in next(it).tolist():
        sched.record(i, 1.0)
    assert sched.refresh_due
    with pytest.raises(RuntimeError, match="refresh"):
        next(it)
    sched2 = HighLossSchedule(4, 0.5, 20, refresh_every=2)
    it = sched2.rounds()
    for i in next(it).tolist():
        sched2.record(i, 1.0)
    sched2.refresh(torch.tensor([0.0, 3.0, 1.0, 2.0]))
    assert next(it).tolist() == [1, 3]  # selection uses the refreshed scores
    sched2.record(1, 0.0)
    sched2.record(3, 0.0)
    assert not sched2.refresh_due  # every 2nd selection only
    with pytest.raises(ValueError, match="shape"):
        sched2.refresh(torch.zeros(3))
