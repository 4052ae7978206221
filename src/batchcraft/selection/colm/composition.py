"""CoLM composition: which sources are "small" (kept whole) and per-source budgets for the rest.

The pool holds ``N`` examples with source ids ``sources: [N]``. Every example of a small source is
kept; the remaining budget ``b' = b - |kept|`` is split over the big-source candidates ``R``
(``N' = |R|``) in proportion to their pool counts with an exact remainder rule::

    b_q = floor(n_q * b' / N');  r = b' - sum_q b_q
    while r > 0: cycle over sources ordered by (b_q asc, q asc): if b_q < n_q: b_q += 1; r -= 1
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["keep_mask", "small_sources_from_counts", "source_budgets"]


def _counts_dict(counts: Tensor | Mapping[int, int]) -> dict[int, int]:
    if isinstance(counts, Tensor):
        if counts.dim() != 1:
            raise ValueError(
                f"counts must be a 1-D tensor indexed by source id, got shape {tuple(counts.shape)}"
            )
        return {q: int(c) for q, c in enumerate(counts.tolist())}
    if isinstance(counts, Mapping):
        return {int(q): int(c) for q, c in counts.items()}
    raise TypeError(
        f"counts must be a 1-D Tensor or a Mapping source -> count, got {type(counts).__name__}"
    )


def small_sources_from_counts(
    counts: Tensor | Mapping[int, int], *, rule: str | float = "mean"
) -> set[int]:
    """Sources whose size is below a threshold (kept whole in every coreset).

    Args:
        counts: dataset size per source, ``[Q]`` tensor (index = source id) or a mapping.
        rule: ``"mean"``: ``count < mean count`` (the paper's rule); a float ``c > 0``:
            ``count < total / c``.

    Returns:
        The set of small source ids.
    """
    cd = _counts_dict(counts)
    if not cd:
        raise ValueError("counts is empty; give at least one source count")
    if any(c < 0 for c in cd.values()):
        raise ValueError(f"counts must be non-negative, got {cd}")
    total = sum(cd.values())
    if rule == "mean":
        thr = total / len(cd)
    elif isinstance(rule, (int, float)) and not isinstance(rule, bool):
        if rule <= 0:
            raise ValueError(f"rule as a number must be > 0 (count < total / rule), got {rule}")
        thr = total / float(rule)
    else:
        raise ValueError(f"rule must be 'mean' or a positive number, got {rule!r}")
    return {q for q, c in cd.items() if c < thr}


def keep_mask(sources: Tensor, small: set[int] | frozenset[int]) -> Tensor:
    """``[N]`` bool: which pool examples belong to a small source.

    Args:
        sources: ``[N]`` integer source ids.
        small: small source ids.
    """
    if sources.dim() != 1:
        raise ValueError(f"sources must be 1-D [N], got shape {tuple(sources.shape)}")
    if not small:
        return torch.zeros_like(sources, dtype=torch.bool)
    ids = torch.tensor(sorted(small), dtype=sources.dtype, device=sources.device)
    return torch.isin(sources, ids)


def source_budgets(sources: Tensor, budget: int) -> dict[int, int]:
    """Proportional per-source quotas with the exact remainder rule.

    Args:
        sources: ``[N']`` source ids of the big-source candidates.
        budget: ``b'``, the number of picks to share out; ``0 <= budget <= N'``.

    Returns:
        ``{q: b_q}`` for every source present, ``sum b_q == budget`` and ``0 <= b_q <= n_q``.
    """
    if sources.dim() != 1:
        raise ValueError(f"sources must be 1-D [N'], got shape {tuple(sources.shape)}")
    n = int(sources.numel())
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in [0, {n}] (the number of candidates), got {budget}")
    qs, cnt = torch.unique(sources, return_counts=True)
    counts = {int(q): int(c) for q, c in zip(qs.tolist(), cnt.tolist(), strict=True)}
    if n == 0:
        return {}
    b = {q: (c * budget) // n for q, c in counts.items()}  # exact integer floor
    r = budget - sum(b.values())
    while r > 0:
        progressed = False
        for q in sorted(b, key=lambda s: (b[s], s)):
            if r == 0:
                break
            if b[q] < counts[q]:
                b[q] += 1
                r -= 1
                progressed = True
        if not progressed:  # pragma: no cover - impossible since budget <= n
            raise RuntimeError("remainder could not be placed")
    return b
