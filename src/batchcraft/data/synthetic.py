"""Synthetic sequence tasks that separate long-range memory from local attention.

* :class:`RecallTask`: multi-query associative recall (MQAR) where every key/value pair sits
  further back than a sliding window (and than the receptive field of a stack of windowed
  layers) can reach, so only a recurrent state (LaCT fast weights) or full attention can
  answer. :func:`associative_recall` is its functional form with the quarter-vocabulary layout.
* :class:`RecallBatches`: reproducible recall batches, batch ``i`` a pure function of
  ``(seed, i)`` (exact resume, like :class:`batchcraft.data.text.ByteBatches`).
* :func:`copy_task`: copy a random string after a separator.

Every generator returns ``(input_ids [B, T], labels [B, T])`` with ``labels = -100`` where no
prediction is scored; ``labels`` are aligned with ``input_ids`` (the LM's internal shift makes
the logits at position ``t`` predict ``labels[t + 1]``). All randomness flows through the given
``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "RecallBatches", "RecallTask", "associative_recall", "copy_task"]

IGNORE_INDEX = -100


@dataclass(frozen=True, kw_only=True)
class RecallTask:
    """Multi-query associative recall with every pair out of reach of a sliding window.

    Layout of one row (``P`` pairs, ``G`` filler tokens, ``Q`` queries)::

        k1 v1 k2 v2 ... kP vP | f1 ... fG | q1 a1 q2 a2 ... qQ aQ

    Keys are distinct within a row, values are drawn uniformly (repeats allowed), the queries
    are ``Q`` distinct keys of the row in random order and each ``a`` is the value paired with
    its ``q``; only the ``a`` positions are labelled. Tokens come from disjoint ranges: keys
    ``[1, 1 + num_keys)``, values the next ``num_values`` ids, filler the rest of the vocabulary
    (id 0 is never used).

    Distances: the answer to ``q_j`` is predicted at the position of ``q_j``, which lies at
    least ``gap + 1`` positions after the value token of any pair (the last pair's value is at
    ``2P - 1``, the first query at ``2P + G``). A causal window ``[t - W + 1, t]`` therefore
    never contains a pair when ``gap >= W - 1``, and a stack of ``L`` windowed layers (whose
    receptive field reaches ``L * (W - 1)`` positions back) cannot relay one through the
    filler when ``gap >= L * (W - 1)``; :meth:`for_window` picks that gap. Earlier answers in
    the query block carry no information about later ones (distinct keys, independent values).

    Chance level: without the pairs, every value is equally likely, so the best accuracy is
    ``1 / num_values`` and the best loss ``log(num_values)`` nats per answer
    (:attr:`chance_accuracy`, :attr:`chance_loss`).

    Example::

        task = RecallTask.for_window(window=16, num_layers=2, num_pairs=4)   # gap 30
        ids, labels = task.sample(8, generator=torch.Generator().manual_seed(0))  # [8, 46]
    """

    num_pairs: int = 8  # P
    gap: int = 64  # G: filler tokens between the last pair and the first query
    num_queries: int | None = None  # Q <= P (default P)
    num_keys: int = 63  # distinct key ids
    num_values: int = 64  # distinct value ids; chance accuracy is 1 / num_values
    vocab_size: int = 256

    def __post_init__(self) -> None:
        p, q = self.num_pairs, self.queries
        if self.num_keys < 1 or self.num_values < 2:
            raise ValueError(
                f"num_keys ({self.num_keys}) must be >= 1 and num_values ({self.num_values}) >= 2"
            )
        if 1 + self.num_keys + self.num_values >= self.vocab_size:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) must exceed 1 + num_keys + num_values = "
                f"{1 + self.num_keys + self.num_values} so that filler tokens have ids of their own"
            )
        if not 1 <= p <= self.num_keys:
            raise ValueError(
                f"num_pairs ({p}) must be in [1, num_keys = {self.num_keys}] (keys are distinct)"
            )
        if not 1 <= q <= p:
            raise ValueError(f"num_queries ({q}) must be in [1, num_pairs = {p}]")
        if self.gap < 0:
            raise ValueError(f"gap ({self.gap}) must be >= 0")

    @classmethod
    def for_window(
        cls, *, window: int, num_layers: int, num_pairs: int = 8, **kw: int | None
    ) -> RecallTask:
        """The task whose pairs are beyond the reach of ``num_layers`` layers of window ``window``.

        Args:
            window: attention window ``W`` (tokens ``[t - W + 1, t]``).
            num_layers: windowed layers ``L`` stacked in the model.
            num_pairs: ``P``.
            **kw: other fields (``num_queries``, ``num_keys``, ``num_values``, ``vocab_size``).
        """
        if window < 1 or num_layers < 1:
            raise ValueError(f"window ({window}) and num_layers ({num_layers}) must be >= 1")
        return cls(num_pairs=num_pairs, gap=num_layers * (window - 1), **kw)  # type: ignore[arg-type]

    @property
    def queries(self) -> int:
        """``Q``: queries per row."""
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def length(self) -> int:
        """``T = 2P + G + 2Q``."""
        return 2 * self.num_pairs + self.gap + 2 * self.queries

    @property
    def min_distance(self) -> int:
        """Fewest positions between a pair's value token and a query that asks for any pair."""
        return self.gap + 1

    @property
    def chance_accuracy(self) -> float:
        """Best answer accuracy without access to the pairs: ``1 / num_values``."""
        return 1.0 / self.num_values

    @property
    def chance_loss(self) -> float:
        """Best answer loss without access to the pairs: ``log(num_values)`` nats."""
        return math.log(self.num_values)

    def answer_positions(self) -> Tensor:
        """``[Q]`` positions of the answer tokens (the labelled positions)."""
        return 2 * self.num_pairs + self.gap + 1 + 2 * torch.arange(self.queries)

    def sample(self, batch_size: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(input_ids [B, T], labels [B, T])`` int64; labels are ``-100`` except at answers."""
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1")
        b, p, nq = batch_size, self.num_pairs, self.queries
        k0, v0 = 1, 1 + self.num_keys
        f0 = v0 + self.num_values
        # distinct keys per row: the first P of a random permutation of the key range
        perm = torch.argsort(torch.rand(b, self.num_keys, generator=generator), dim=1)
        keys = perm[:, :p] + k0  # [B, P]
        vals = torch.randint(v0, f0, (b, p), generator=generator)  # [B, P]
        filler = torch.randint(f0, self.vocab_size, (b, self.gap), generator=generator)
        which = torch.argsort(torch.rand(b, p, generator=generator), dim=1)[:, :nq]  # [B, Q]
        qk, qv = keys.gather(1, which), vals.gather(1, which)  # [B, Q] each
        pairs = torch.stack([keys, vals], dim=2).reshape(b, 2 * p)  # [B, 2P]
        queries = torch.stack([qk, qv], dim=2).reshape(b, 2 * nq)  # [B, 2Q]
        ids = torch.cat([pairs, filler, queries], dim=1)  # [B, T]
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, self.answer_positions()] = qv
        return ids, labels

    def batches(self, batch_size: int, *, seed: int = 0) -> RecallBatches:
        """Reproducible batches of this task (see :class:`RecallBatches`)."""
        return RecallBatches(self, batch_size=batch_size, seed=seed)


class RecallBatches:
    """Batches of a :class:`RecallTask`; batch ``i`` depends only on ``(seed, i)``.

    Example::

        data = RecallTask(num_pairs=4, gap=30).batches(16, seed=0)
        ids, labels = data.get(0)        # [16, 46] each; the same for every call with i = 0
    """

    def __init__(self, task: RecallTask, *, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size ({batch_size}) must be >= 1")
        self.task, self.batch_size, self.seed = task, batch_size, seed

    @property
    def context(self) -> int:
        """Tokens per row ``T``."""
        return self.task.length

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch number ``step``: ``(input_ids [B, T], labels [B, T])``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.task.sample(self.batch_size, generator=g)

    def sequential(self, max_batches: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``0 .. max_batches - 1`` (default 1), e.g. of a held-out ``seed``."""
        for i in range(1 if max_batches is None else max_batches):
            yield self.get(i)


def associative_recall(
    batch_size: int,
    *,
    num_pairs: int,
    min_gap: int,
    num_queries: int | None = None,
    vocab_size: int = 256,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall with pairs far before their queries.

    :class:`RecallTask` with the quarter-vocabulary layout: keys ``[1, V/4)``, values
    ``[V/4, V/2)``, filler ``[V/2, V)``; chance accuracy ``1 / (V/2 - V/4)``.

    Args:
        batch_size: ``B``.
        num_pairs: key/value pairs per row ``P``.
        min_gap: number of filler tokens between the last pair and the first query; every
            pair's value is at least ``min_gap + 1`` tokens before any query.
        num_queries: queries per row (default ``P``, at most ``P``).
        vocab_size: ``V >= 16``.
        generator: source of randomness.

    Returns:
        ``input_ids [B, T]`` int64 and ``labels [B, T]`` (``-100`` except at answers), with
        ``T = 2P + min_gap + 2Q``.
    """
    if vocab_size < 16:
        raise ValueError(f"vocab_size ({vocab_size}) must be >= 16")
    task = RecallTask(
        num_pairs=num_pairs,
        gap=min_gap,
        num_queries=num_queries,
        num_keys=vocab_size // 4 - 1,
        num_values=vocab_size // 2 - vocab_size // 4,
        vocab_size=vocab_size,
    )
    return task.sample(batch_size, generator=generator)


def copy_task(
    batch_size: int,
    *,
    length: int,
    vocab_size: int = 256,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Copy a random string: ``x1 .. xL SEP x1 .. xL``; only the second copy is labelled.

    Args:
        batch_size: ``B``.
        length: string length ``L``.
        vocab_size: ``V >= 4``; token 0 is the separator, content uses ``[1, V)``.
        generator: source of randomness.

    Returns:
        ``input_ids [B, 2L + 1]`` and ``labels [B, 2L + 1]``.
    """
    if length < 1 or vocab_size < 4:
        raise ValueError(f"need length >= 1 and vocab_size >= 4, got {length}, {vocab_size}")
    x = torch.randint(1, vocab_size, (batch_size, length), generator=generator)
    sep = torch.zeros(batch_size, 1, dtype=torch.long)
    ids = torch.cat([x, sep, x], dim=1)  # [B, 2L + 1]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, length + 1 :] = x
    return ids, labels
