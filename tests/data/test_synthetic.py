"""Synthetic recall/copy tasks: layout, far-away pairs, determinism."""

from __future__ import annotations

import pytest
import torch

from batchcraft.data.synthetic import IGNORE_INDEX, associative_recall, copy_task


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


def test_copy_task():
    ids, labels = copy_task(3, length=7, vocab_size=16, generator=torch.Generator().manual_seed(2))
    assert ids.shape == (3, 15)
    assert torch.equal(ids[:, :7], ids[:, 8:]) and bool((ids[:, 7] == 0).all())
    assert bool((labels[:, :8] == IGNORE_INDEX).all()) and torch.equal(labels[:, 8:], ids[:, 8:])
