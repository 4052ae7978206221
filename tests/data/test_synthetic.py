"""Synthetic recall/copy tasks: recoverable answers, pairs beyond the window, chance level."""

from __future__ import annotations

import math

import pytest
import torch

from batchcraft.data.synthetic import (
    IGNORE_INDEX,
    RecallBatches,
    RecallTask,
    associative_recall,
    copy_task,
)


def test_associative_recall_answers_and_gap():
    g = torch.Generator().manual_seed(0)
    ids, labels = associative_recall(
        4, num_pairs=6, min_gap=20, num_queries=3, vocab_size=64, generator=g
    )
    assert ids.shape == labels.shape == (4, 12 + 20 + 6)
    for row in range(4):
        pairs = {int(ids[row, 2 * i]): int(ids[row, 2 * i + 1]) for i in range(6)}
        assert len(pairs) == 6  # distinct keys
        scored = (labels[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == 3
        for pos in scored:
            key = int(ids[row, pos - 1])
            assert labels[row, pos] == ids[row, pos] == pairs[key]
            key_pos = next(2 * i for i in range(6) if int(ids[row, 2 * i]) == key)
            assert pos - 1 - key_pos > 20  # more than min_gap tokens back
        filler = ids[row, 12:32]
        assert bool((filler >= 32).all())  # filler never looks like a key or value


def test_determinism_and_errors():
    a = associative_recall(2, num_pairs=4, min_gap=5, generator=torch.Generator().manual_seed(1))
    b = associative_recall(2, num_pairs=4, min_gap=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="num_pairs"):
        associative_recall(1, num_pairs=100, min_gap=1, vocab_size=64, generator=torch.Generator())
    with pytest.raises(ValueError, match="num_queries"):
        associative_recall(1, num_pairs=3, num_queries=4, min_gap=1, generator=torch.Generator())


def _recover(task: RecallTask, ids: torch.Tensor) -> torch.Tensor:
    """Answers read off the sequence alone: the value that follows the query's key in the pairs."""
    p = task.num_pairs
    out = torch.full((ids.shape[0], task.queries), -1, dtype=torch.long)
    for r in range(ids.shape[0]):
        table = {int(ids[r, 2 * i]): int(ids[r, 2 * i + 1]) for i in range(p)}
        for j, pos in enumerate(task.answer_positions().tolist()):
            out[r, j] = table[int(ids[r, pos - 1])]
    return out


@pytest.mark.parametrize(
    "task",
    [
        RecallTask(num_pairs=8, gap=64),
        RecallTask(num_pairs=5, gap=7, num_queries=3, num_keys=10, num_values=6, vocab_size=32),
        RecallTask(num_pairs=1, gap=0, num_keys=1, num_values=2, vocab_size=5),
    ],
    ids=["default", "small-vocab", "one-pair"],
)
def test_recall_answers_recoverable_and_only_answers_scored(task):
    ids, labels = task.sample(16, generator=torch.Generator().manual_seed(3))
    assert ids.shape == labels.shape == (16, task.length)
    pos = task.answer_positions()
    scored = labels != IGNORE_INDEX
    assert torch.equal(scored.nonzero()[:, 1].reshape(16, -1), pos.expand(16, -1))
    assert torch.equal(labels[:, pos], ids[:, pos])  # the answer is the next input token too
    assert torch.equal(_recover(task, ids), labels[:, pos])
    # token classes sit in their own ranges, so the query's key is unambiguous
    keys, vals = ids[:, 0 : 2 * task.num_pairs : 2], ids[:, 1 : 2 * task.num_pairs : 2]
    assert bool(((keys >= 1) & (keys < 1 + task.num_keys)).all())
    v0 = 1 + task.num_keys
    assert bool(((vals >= v0) & (vals < v0 + task.num_values)).all())
    filler = ids[:, 2 * task.num_pairs : 2 * task.num_pairs + task.gap]
    assert bool((filler >= v0 + task.num_values).all()) and bool((filler < task.vocab_size).all())
    assert all(len(set(row.tolist())) == task.num_pairs for row in keys)  # distinct keys


@pytest.mark.parametrize("window,layers", [(16, 1), (16, 2), (32, 3)], ids=lambda x: str(x))
def test_recall_pairs_beyond_the_windowed_receptive_field(window, layers):
    task = RecallTask.for_window(window=window, num_layers=layers, num_pairs=6)
    ids, _ = task.sample(4, generator=torch.Generator().manual_seed(0))
    reach = layers * (window - 1)  # an L-layer SWA stack sees positions >= t - reach
    for r in range(4):
        pair_pos = {int(ids[r, 2 * i]): 2 * i for i in range(task.num_pairs)}
        for ans in task.answer_positions().tolist():
            t = ans - 1  # the answer is predicted at the query's position
            key_pos = pair_pos[int(ids[r, t])]
            assert t - (key_pos + 1) >= task.min_distance > reach  # value token out of reach
            # nothing inside the reach names the pair: only the query itself carries its key
            seen = ids[r, max(0, t - reach) : t + 1].tolist()
            assert seen.count(int(ids[r, t])) == 1
    assert task.min_distance == reach + 1


def test_recall_chance_level():
    task = RecallTask(num_pairs=4, gap=8, num_keys=20, num_values=8, vocab_size=40)
    assert task.chance_accuracy == 1 / 8 and task.chance_loss == pytest.approx(math.log(8))
    _, labels = task.sample(4000, generator=torch.Generator().manual_seed(1))
    ans = labels[:, task.answer_positions()].flatten() - (1 + task.num_keys)
    freq = torch.bincount(ans, minlength=8).double() / ans.numel()
    # answers are uniform over the values: no memoryless guess beats 1 / num_values
    assert float(freq.max()) < task.chance_accuracy + 0.01
    assert float(freq.min()) > task.chance_accuracy - 0.01
    # and the first answer says nothing about the second (independent values, distinct keys)
    a = labels[:, task.answer_positions()] - (1 + task.num_keys)
    same = float((a[:, 0] == a[:, 1]).double().mean())
    assert abs(same - 1 / 8) < 0.02


def test_recall_batches_reproducible():
    data = RecallBatches(RecallTask(num_pairs=3, gap=5), batch_size=4, seed=7)
    a, b, c = data.get(2), data.get(2), data.get(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert data.context == a[0].shape[1] == 2 * 3 + 5 + 2 * 3
    other = RecallTask(num_pairs=3, gap=5).batches(4, seed=8).get(2)
    assert not torch.equal(a[0], other[0])
    seq = list(data.sequential(3))
    assert len(seq) == 3 and torch.equal(seq[2][0], a[0])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_pairs=0), "num_pairs"),
        (dict(num_pairs=70), "num_pairs"),
        (dict(num_pairs=4, num_queries=5), "num_queries"),
        (dict(gap=-1), "gap"),
        (dict(num_values=1), "num_values"),
        (dict(num_keys=100, num_values=200), "vocab_size"),
    ],
)
def test_recall_task_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        RecallTask(**kw)


def test_copy_task():
    ids, labels = copy_task(3, length=7, vocab_size=16, generator=torch.Generator().manual_seed(2))
    assert ids.shape == (3, 15)
    assert torch.equal(ids[:, :7], ids[:, 8:]) and bool((ids[:, 7] == 0).all())
    assert bool((labels[:, :8] == IGNORE_INDEX).all()) and torch.equal(labels[:, 8:], ids[:, 8:])
