"""Synthetic sequence tasks that separate long-range memory from local attention.

* :func:`associative_recall`: multi-query associative recall (MQAR) where every key/value pair
  sits more than ``min_gap`` tokens before its query, so a sliding window of ``W <= min_gap``
  cannot see it and only a recurrent state (LaCT fast weights) or full attention can answer.
* :func:`copy_task`: copy a random string after a separator.

Both return ``(input_ids [B, T], labels [B, T])`` with ``labels = -100`` where no prediction is
scored; ``labels[t]`` is the target for the logits at position ``t`` *before* the LM's internal
shift, i.e. labels are aligned with ``input_ids`` (the LM predicts ``labels[t + 1]`` from
positions ``<= t``). All randomness flows through the given ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "associative_recall", "copy_task"]

IGNORE_INDEX = -100


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

    Layout per row: ``k1 v1 k2 v2 ... kP vP | filler x min_gap | q1 a1 q2 a2 ...`` where the
    ``q`` are keys drawn from the pairs (without repetition) and ``a`` their values; only the
    ``a`` positions are labelled. Keys, values and filler use disjoint token ranges
    (quarters of the vocabulary: keys ``[1, V/4)``, values ``[V/4, V/2)``, filler ``[V/2, V)``).

    Args:
        batch_size: ``B``.
        num_pairs: key/value pairs per row ``P``.
        min_gap: number of filler tokens between the last pair and the first query; every
            pair is at least ``min_gap + 1`` tokens before its query.
        num_queries: queries per row (default ``P``, at most ``P``).
        vocab_size: ``V >= 16``.
        generator: source of randomness.

    Returns:
        ``input_ids [B, T]`` int64 and ``labels [B, T]`` (``-100`` except at answers), with
        ``T = 2P + min_gap + 2Q``.
    """
    nq = num_pairs if num_queries is None else num_queries
    if vocab_size < 16:
        raise ValueError(f"vocab_size ({vocab_size}) must be >= 16")
    n_keys = vocab_size // 4 - 1
    if not 1 <= num_pairs <= n_keys:
        raise ValueError(f"num_pairs ({num_pairs}) must be in [1, {n_keys}] for vocab {vocab_size}")
    if not 1 <= nq <= num_pairs:
        raise ValueError(f"num_queries ({nq}) must be in [1, num_pairs = {num_pairs}]")
    if min_gap < 0:
        raise ValueError(f"min_gap ({min_gap}) must be >= 0")
    b, p = batch_size, num_pairs
    # distinct keys per row: the first P of a random permutation of the key range
    keys = torch.argsort(torch.rand(b, n_keys, generator=generator), dim=1)[:, :p] + 1  # [B, P]
    vals = torch.randint(vocab_size // 4, vocab_size // 2, (b, p), generator=generator)  # [B, P]
    filler = torch.randint(vocab_size // 2, vocab_size, (b, min_gap), generator=generator)
    which = torch.argsort(torch.rand(b, p, generator=generator), dim=1)[:, :nq]  # [B, Q]
    qk = keys.gather(1, which)
    qv = vals.gather(1, which)
    pairs = torch.stack([keys, vals], dim=2).reshape(b, 2 * p)  # [B, 2P]
    queries = torch.stack([qk, qv], dim=2).reshape(b, 2 * nq)  # [B, 2Q]
    ids = torch.cat([pairs, filler, queries], dim=1)  # [B, T]
    labels = torch.full_like(ids, IGNORE_INDEX)
    start = 2 * p + min_gap
    labels[:, start + 1 :: 2] = qv
    return ids, labels


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
