"""Facility location on a similarity matrix: naive reference, vectorised greedy, lazy greedy.

Objective for a selected set ``S``: ``f(S) = sum_i max_{j in S} sim[i, j]`` (with ``max over the
empty set = 0``; ``sim >= 0``). Greedy adds the first argmax of the marginal gain
``gain_j = sum_i max(0, sim[i, j] - cur_i)`` where ``cur_i = max_{j in S} sim[i, j]``. ``f`` is
monotone submodular, so greedy reaches ``>= (1 - 1/e) OPT``.

* ``naive``: Python loops over candidates and rows (the reference).
* ``greedy``: one ``[N, N]`` tensor op per pick (identical picks to ``naive``).
* ``lazy``: Minoux's lazy greedy with a priority queue of stale upper bounds (same picks up to
  exact ties in the gains; the default for ``N > 512``).
"""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

__all__ = [
    "cluster_weights",
    "facility_location",
    "facility_objective",
    "l1_similarity",
]


def l1_similarity(x: Tensor) -> Tensor:
    """``S = max(D) - D`` with ``D`` the pairwise L1 distances.

    Args:
        x: ``[N, F]`` features.

    Returns:
        ``[N, N]`` symmetric, non-negative, diagonal ``max(D)``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [N, F], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        return x.new_zeros(0, 0)
    d = torch.cdist(x, x, p=1.0)  # [N, N]
    d = 0.5 * (d + d.T)  # exact symmetry despite blocked reductions
    d.fill_diagonal_(0.0)
    return d.max() - d


def _check(sim: Tensor, k: int) -> int:
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be square [N, N], got shape {tuple(sim.shape)}")
    n = sim.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, N={n}], got {k}")
    if n and bool((sim < 0).any()):
        raise ValueError("sim must be non-negative (use S = max(D) - D or add a constant)")
    return n


def facility_objective(sim: Tensor, selected: Tensor) -> float:
    """``sum_i max_{j in selected} sim[i, j]`` (0 for an empty selection)."""
    if selected.numel() == 0:
        return 0.0
    return float(sim[:, selected].max(dim=1).values.sum())


def _naive(sim: Tensor, k: int) -> list[int]:
    n = sim.shape[0]
    s = sim.tolist()
    cur = [0.0] * n
    picks: list[int] = []
    for _ in range(k):
        best, best_gain = -1, -1.0
        for j in range(n):
            if j in picks:
                continue
            gain = sum(max(0.0, s[i][j] - cur[i]) for i in range(n))
            if gain > best_gain:
                best, best_gain = j, gain
        picks.append(best)
        cur = [max(cur[i], s[i][best]) for i in range(n)]
    return picks


def _greedy(sim: Tensor, k: int) -> list[int]:
    n = sim.shape[0]
    cur = sim.new_zeros(n)  # [N]
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    picks: list[int] = []
    for _ in range(k):
        gain = (sim - cur[:, None]).clamp_min(0).sum(dim=0)  # [N] gain per candidate column
        gain = gain.masked_fill(taken, -1.0)
        j = int(torch.argmax(gain))  # first argmax
        picks.append(j)
        taken[j] = True
        cur = torch.maximum(cur, sim[:, j])
    return picks


def _lazy(sim: Tensor, k: int) -> list[int]:
    n = sim.shape[0]
    cur = sim.new_zeros(n)
    first = sim.sum(dim=0).tolist()  # gains against the empty set
    heap = [(-g, j, 0) for j, g in enumerate(first)]  # (-gain, index, stamp); ties -> lower j
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < k:
        _, j, stamp = heapq.heappop(heap)
        if stamp == len(picks):  # fresh upper bound: it is the max
            picks.append(j)
            cur = torch.maximum(cur, sim[:, j])
            continue
        g = float((sim[:, j] - cur).clamp_min(0).sum())
        heapq.heappush(heap, (-g, j, len(picks)))
    return picks


def facility_location(sim: Tensor, k: int, *, impl: str = "auto") -> Tensor:
    """Greedy facility-location selection.

    Args:
        sim: ``[N, N]`` non-negative similarities, ``sim[i, j]``: how well ``j`` represents ``i``.
        k: number of picks, ``0 <= k <= N``.
        impl: ``"naive"`` | ``"greedy"`` | ``"lazy"`` | ``"auto"`` (lazy for ``N > 512``).

    Returns:
        ``[K]`` long indices in pick order.
    """
    n = _check(sim, k)
    if impl == "auto":
        impl = "lazy" if n > 512 else "greedy"
    fns = {"naive": _naive, "greedy": _greedy, "lazy": _lazy}
    if impl not in fns:
        raise ValueError(f"impl must be one of 'auto', 'naive', 'greedy', 'lazy', got {impl!r}")
    picks = fns[impl](sim, k) if k else []
    return torch.tensor(picks, dtype=torch.long, device=sim.device)


def cluster_weights(sim: Tensor, selected: Tensor) -> Tensor:
    """Cluster sizes of the medoids: each row counted once at its most similar pick.

    Ties go to the earliest selected pick; a medoid's own row goes to itself when its diagonal is
    the row maximum (true for ``S = max(D) - D``).

    Args:
        sim: ``[N, N]`` similarities.
        selected: ``[K]`` picks in pick order.

    Returns:
        ``[K]`` float counts, summing to ``N``.
    """
    if selected.numel() == 0:
        return sim.new_zeros(0)
    sub = sim[:, selected]  # [N, K]
    owner = torch.argmax(sub, dim=1)  # first max = earliest selected
    owner[selected] = torch.arange(selected.numel(), device=sim.device)  # medoids count themselves
    return torch.bincount(owner, minlength=selected.numel()).to(sim.dtype)
