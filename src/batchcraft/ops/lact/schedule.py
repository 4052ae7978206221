"""Schedules: which token ranges update the fast weights and which read them.

A schedule is a list of :class:`TTTOp` executed in order by one generic executor:

* ``update``       one descent step using ALL tokens of ``[start, end)`` (one momentum mean);
* ``apply``        ``o[start:end] = f_W(q[start:end])`` with the current weights;
* ``apply_update`` apply, then update on the same range (causal, "shifted block-causal");
* ``update_apply`` update, then apply on the same range (bidirectional inside the range).

Tokens never applied get zero output.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "OP_KINDS",
    "Schedule",
    "TTTOp",
    "bidirectional_schedule",
    "causal_schedule",
    "strided_schedule",
    "validate_schedule",
]

OP_KINDS = ("update", "apply", "update_apply", "apply_update")


class TTTOp(NamedTuple):
    """One schedule step over the token range ``[start, end)``."""

    kind: str
    start: int
    end: int


# what an op call runs: "causal" (the stream), "bidirectional", or an explicit op list
Schedule = str | Sequence[TTTOp] | Sequence[tuple[str, int, int]]


def causal_schedule(T: int, C: int) -> list[TTTOp]:
    """Apply-then-update on every complete chunk, then apply on the tail ``[n*C, T)``.

    Token ``t``'s output depends only on chunks strictly before its own chunk (plus ``q_t``).
    The update of the last complete chunk is included: it changes no output but the returned
    state then absorbs every complete chunk.
    """
    if T < 0 or C < 1:
        raise ValueError(f"causal_schedule needs T >= 0 and C >= 1, got T={T}, C={C}")
    n = T // C
    ops = [TTTOp("apply_update", j * C, (j + 1) * C) for j in range(n)]
    if n * C < T:
        ops.append(TTTOp("apply", n * C, T))
    return ops


def bidirectional_schedule(n_update: int, T: int) -> list[TTTOp]:
    """``[update(0, n_update), apply(0, T)]``: the first ``n_update`` tokens (e.g. input views)
    write the state once, then every token reads it (NVS)."""
    if not 0 < n_update <= T:
        raise ValueError(f"bidirectional_schedule needs 0 < n_update <= T, got {n_update}, T={T}")
    return [TTTOp("update", 0, n_update), TTTOp("apply", 0, T)]


def strided_schedule(boundaries: Sequence[int]) -> list[TTTOp]:
    """AR-video schedule over alternating noisy / clean chunks.

    ``boundaries = [0, b1, b2, ...]`` split the sequence into chunks
    ``noisy_0, clean_0, noisy_1, clean_1, ...`` (chunk ``i`` is ``[b_i, b_{i+1})``). The first noisy
    chunk is applied with ``W0``; then for each clean chunk ``clean_i``: ``update(clean_i)`` followed
    by ``apply([clean_i.start, noisy_{i+1}.end))``, so the clean chunk and the next noisy chunk read
    the weights that have absorbed ``clean_0 .. clean_i``.

    Example: ``strided_schedule([0, 4, 8, 12, 16])`` ->
    ``apply(0,4), update(4,8), apply(4,12), update(12,16), apply(12,16)``.
    """
    b = list(boundaries)
    if len(b) < 3 or b[0] != 0 or any(x >= y for x, y in itertools.pairwise(b)):
        raise ValueError(
            "strided_schedule needs strictly increasing boundaries starting at 0 with at least "
            f"one noisy and one clean chunk, e.g. [0, 4, 8, 12, 16]; got {b}"
        )
    chunks = list(itertools.pairwise(b))  # noisy_0, clean_0, noisy_1, clean_1, ...
    noisy = chunks[0::2]
    clean = chunks[1::2]
    ops = [TTTOp("apply", noisy[0][0], noisy[0][1])]
    for i, (cs, ce) in enumerate(clean):
        ops.append(TTTOp("update", cs, ce))
        end = noisy[i + 1][1] if i + 1 < len(noisy) else ce
        ops.append(TTTOp("apply", cs, end))
    return ops


def validate_schedule(
    schedule: Sequence[TTTOp] | Sequence[tuple[str, int, int]], T: int
) -> list[TTTOp]:
    """Check kinds and ranges of an explicit op list; return it as :class:`TTTOp` values."""
    out: list[TTTOp] = []
    for i, op in enumerate(schedule):
        if len(op) != 3:
            raise ValueError(f"schedule[{i}] must be (kind, start, end), got {op!r}")
        kind, s, e = op
        if kind not in OP_KINDS:
            raise ValueError(f"schedule[{i}].kind must be one of {OP_KINDS}, got {kind!r}")
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= T):
            raise ValueError(
                f"schedule[{i}] range must satisfy 0 <= start < end <= T={T}, got [{s}, {e})"
            )
        out.append(TTTOp(kind, s, e))
    return out
