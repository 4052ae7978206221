"""High-loss mini-batch training ("hard batches", Sahayam et al., arXiv 2304.03486): the schedule.

The data is cut once into ``b`` fixed mini-batches (:func:`fixed_partition`). Round 0 trains every
batch once; each later round trains only the ``K = max(1, floor(delta * b))`` batches whose last
observed training loss is largest (stale scores for the others), in ascending batch-index order,
until the optimizer-step budget ``S`` (the same as plain training) is spent, possibly mid-round::

    s = +inf [b]
    round 0:      train(i) for i in 0..b-1
    round r >= 1: for i in sorted(top_K(s)): train(i)         # ties -> lower index
    train(i):     loss = forward(P[i]); step; s[i] = loss      # pre-update loss, no extra forward

``delta = 1`` trains every batch in index order each round: plain training on the fixed partition.

Shapes: ``b`` batches, ``m`` batch size, ``K`` selected batches per round.

The training loop that drives this schedule lives in :mod:`batchcraft.recipes.hard_batches`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = [
    "FixedBatchSampler",
    "HighLossSchedule",
    "fixed_partition",
    "num_selected",
    "num_training_steps",
    "select_hard",
    "select_random",
]

Selector = Callable[[Tensor, int], Tensor]


def select_hard(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, ties broken towards the lower index, sorted ascending.

    Args:
        scores: ``[N]`` finite or ``+inf`` scores (no NaN).
        k: how many to select, ``1 <= k <= N``.

    Returns:
        ``[K]`` int64 indices in ascending order.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {tuple(scores.shape)}")
    n = scores.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k ({k}) must be in [1, N={n}]")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; record finite losses only")
    # A stable descending sort keeps equal scores in index order, so ties go to the lower index.
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def select_random(n: int, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``k`` distinct indices drawn uniformly from ``range(n)``, sorted ascending (the random control).

    Returns:
        ``[K]`` int64 indices.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k ({k}) must be in [1, n={n}]")
    return torch.sort(torch.randperm(n, generator=generator)[:k]).values


def num_selected(num_batches: int, delta: float) -> int:
    """``K = max(1, floor(delta * b))``; ``delta`` must lie in ``(0, 1]``.

    ``floor`` is taken after rounding ``delta * b`` to 9 decimals so that e.g. ``0.29 * 100``
    (28.999999999999996 in binary floating point) gives 29, as a reader of the formula expects.
    """
    if not (isinstance(delta, int | float) and 0.0 < float(delta) <= 1.0):
        raise ValueError(f"delta must be a number in (0, 1], got {delta!r}")
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    return max(1, math.floor(round(float(delta) * num_batches, 9)))


def num_training_steps(num_samples: int, batch_size: int, epochs: float) -> int:
    """Total optimizer steps of a hard-batch run: ``S = max(1, round(epochs * b))``, ``b = N // m``.

    The budget is plain training's, so it does not depend on ``delta``; one "epoch" is ``b``
    optimizer steps (the partition drops the last incomplete batch). Size a learning-rate
    schedule with it, e.g. ``OneCycleLR(opt, max_lr, total_steps=num_training_steps(N, m, E))``
    for ``train_high_loss(..., batch_size=m, epochs=E)``. ``round`` is Python's (halves go to the
    even integer).

    Args:
        num_samples: dataset size ``N``.
        batch_size: ``m``, ``1 <= m <= N``.
        epochs: ``E > 0``, in units of ``b`` steps (fractions allowed).

    Returns:
        The number of optimizer steps :func:`~batchcraft.recipes.hard_batches.train_high_loss` takes.
    """
    if num_samples < 1:
        raise ValueError(f"the dataset is empty (num_samples={num_samples}); nothing to train on")
    if not 1 <= batch_size <= num_samples:
        raise ValueError(
            f"batch_size must be in [1, num_samples={num_samples}] to leave one full batch, "
            f"got {batch_size}"
        )
    if not (isinstance(epochs, int | float) and math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"epochs must be a finite number > 0, got {epochs!r}")
    return max(1, round(epochs * (num_samples // batch_size)))


def fixed_partition(
    num_samples: int,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = True,
) -> Tensor:
    """Cut ``range(num_samples)`` into fixed mini-batches, once per run.

    Args:
        num_samples: dataset size ``N``.
        batch_size: ``m``.
        shuffle: one random permutation (from ``generator``) before cutting; ``False`` gives the
            contiguous batches of the authors' code (dataset order).
        generator: private RNG for the permutation.
        drop_last: drop the final incomplete batch (the default, as in plain ``drop_last`` training). With ``False`` the last
            row is padded with ``-1``, which :class:`FixedBatchSampler` strips.

    Returns:
        ``P: [b, m]`` int64 sample indices, ``b = N // m`` (or ``ceil(N / m)`` without drop_last).
    """
    if num_samples < 1:
        raise ValueError(f"the dataset is empty (num_samples={num_samples}); nothing to partition")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and num_samples < batch_size:
        raise ValueError(
            f"num_samples ({num_samples}) < batch_size ({batch_size}) leaves no full batch; "
            "use a smaller batch_size or drop_last=False"
        )
    perm = (
        torch.randperm(num_samples, generator=generator) if shuffle else torch.arange(num_samples)
    )
    b = num_samples // batch_size if drop_last else -(-num_samples // batch_size)
    flat = torch.full((b * batch_size,), -1, dtype=torch.long)
    used = min(num_samples, b * batch_size)
    flat[:used] = perm[:used]
    return flat.view(b, batch_size)  # [b, m]


def _check_partition(partition: Tensor) -> None:
    if not isinstance(partition, Tensor) or partition.dim() != 2 or partition.dtype != torch.long:
        raise TypeError("partition must be an int64 tensor [b, m] (see fixed_partition)")
    if partition.shape[0] < 1:
        raise ValueError("partition has no batches")


class FixedBatchSampler(Sampler[list[int]]):
    """Yields the sample indices ``P[i]`` of the given batch ids only, in the given order.

    Use it as ``DataLoader(dataset, batch_sampler=FixedBatchSampler(P, ids))``: the loader's
    workers then fetch and decode only the selected batches. One loader per round keeps worker
    prefetching inside a round, where the selection is already fixed.

    Args:
        partition: ``[b, m]`` from :func:`fixed_partition` (``-1`` entries are padding).
        batch_ids: ``[K]`` batch ids to yield.
        num_replicas: data-parallel world size; each rank yields its share ``P[i][rank::W]``.
        rank: this process's rank.
    """

    def __init__(
        self,
        partition: Tensor,
        batch_ids: Sequence[int] | Tensor,
        *,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        _check_partition(partition)
        ids = torch.as_tensor(batch_ids, dtype=torch.long).reshape(-1)
        b = partition.shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= b):
            raise ValueError(f"batch ids must lie in [0, b={b}), got {ids.tolist()}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {rank=}")
        if partition.shape[1] < num_replicas:
            raise ValueError(
                f"batch size {partition.shape[1]} is smaller than num_replicas={num_replicas}"
            )
        self.partition, self.batch_ids = partition, ids
        self.num_replicas, self.rank = num_replicas, rank

    def __iter__(self) -> Iterator[list[int]]:
        for i in self.batch_ids.tolist():
            row = self.partition[i]
            row = row[row >= 0][self.rank :: self.num_replicas]
            yield row.tolist()

    def __len__(self) -> int:
        return int(self.batch_ids.numel())


class HighLossSchedule:
    """Which batch ids to train in each round, from the losses recorded so far.

    Iterate :meth:`rounds` and call :meth:`record` once for every yielded id before asking for the
    next round (the next selection needs those losses, so a missing record raises
    ``RuntimeError`` instead of silently selecting on stale scores). The budget ``num_steps`` may
    end a round early. A new call of :meth:`rounds` (e.g. after :meth:`load_state_dict`) first
    yields the unrecorded rest of the current round, so a resumed run continues identically.

    Args:
        num_batches: ``b``.
        delta: fraction of batches retrained per round, in ``(0, 1]``; ``K = max(1, floor(delta*b))``.
        num_steps: optimizer-step budget ``S`` (plain training: ``epochs * b``).
        warmup_rounds: full rounds before selection starts (the paper: 1).
        selector: ``"hard"`` (top-K, the method), ``"random"`` (K uniform batches, the control) or a
            callable ``(scores [b], K) -> ids [K]``.
        refresh_every: if set, every ``R``-th selection (1st, R+1-th, ...) needs fresh scores for
            all batches through :meth:`refresh` first (an extra no-grad forward; not the paper's).
        generator: RNG of the ``"random"`` selector (saved in :meth:`state_dict`).
        sync: average newly recorded losses across ``torch.distributed`` ranks before each
            selection, so that all ranks select the same batches (one all-reduce per round).

    Attributes:
        scores: ``[b]`` float64 last-seen loss per batch (``+inf`` = never seen).
        steps_done: optimizer steps recorded so far.
        round_index: number of rounds started.
    """

    def __init__(
        self,
        num_batches: int,
        delta: float,
        num_steps: int,
        *,
        warmup_rounds: int = 1,
        selector: Selector | str = "hard",
        refresh_every: int | None = None,
        generator: torch.Generator | None = None,
        sync: bool = False,
    ) -> None:
        self.k = num_selected(num_batches, delta)
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {warmup_rounds}")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every must be None or >= 1, got {refresh_every}")
        self.num_batches, self.delta, self.num_steps = num_batches, float(delta), num_steps
        self.warmup_rounds, self.refresh_every, self.sync = warmup_rounds, refresh_every, sync
        if generator is None and selector == "random":
            generator = torch.Generator().manual_seed(0)  # private, never the global RNG
        self.generator = generator
        if selector == "hard":
            self.selector: Selector = select_hard
        elif selector == "random":
            self.selector = lambda s, k: select_random(s.numel(), k, generator=self.generator)
        elif callable(selector):
            self.selector = selector
        else:
            raise ValueError(f"selector must be 'hard', 'random' or a callable, got {selector!r}")
        self.scores = torch.full((num_batches,), math.inf, dtype=torch.float64)
        self.steps_done = 0
        self.round_index = 0
        self._current = torch.empty(0, dtype=torch.long)
        self._recorded = torch.empty(0, dtype=torch.bool)
        self._pos: dict[int, int] = {}
        self._fresh = torch.zeros(num_batches, dtype=torch.bool)
        self._refreshed = False

    # ----------------------------------------------------------------------------- rounds
    @property
    def current_round(self) -> Tensor:
        """``[K']`` batch ids of the round in progress (empty before the first round)."""
        return self._current.clone()

    @property
    def finished(self) -> bool:
        """Whether the step budget is spent."""
        return self.steps_done >= self.num_steps

    @property
    def refresh_due(self) -> bool:
        """Whether the next selection waits for :meth:`refresh` (only with ``refresh_every``)."""
        if self.refresh_every is None or self._refreshed or self.finished:
            return False
        r = self.round_index  # the round about to start
        return r >= self.warmup_rounds and (r - self.warmup_rounds) % self.refresh_every == 0

    def _missing(self) -> Tensor:
        return self._current[~self._recorded]

    def rounds(self) -> Iterator[Tensor]:
        """Yield ``[K']`` int64 batch ids per round (ascending), truncated to the remaining budget."""
        rest = self._missing()
        if rest.numel():
            yield rest  # resuming a round that was interrupted
            self._check_recorded()
        while not self.finished:
            yield self._start_round()
            self._check_recorded()

    def _check_recorded(self) -> None:
        rest = self._missing()
        if rest.numel():
            raise RuntimeError(
                f"round {self.round_index - 1}: batches {rest.tolist()} were yielded but not "
                "recorded; call record(batch_id, loss) for every batch of a round before asking "
                "for the next one"
            )

    def _start_round(self) -> Tensor:
        r = self.round_index
        if r < self.warmup_rounds:
            ids = torch.arange(self.num_batches)
        else:
            if self.refresh_due:
                raise RuntimeError(
                    f"refresh_every={self.refresh_every}: call refresh(scores) with a fresh "
                    f"loss for every batch before round {r}"
                )
            self._sync_scores()
            ids = torch.as_tensor(self.selector(self.scores.clone(), self.k), dtype=torch.long)
            if ids.numel() != self.k or ids.unique().numel() != self.k:
                raise RuntimeError(
                    f"selector returned {ids.tolist()}; expected {self.k} distinct ids"
                )
        ids = ids[: self.num_steps - self.steps_done]
        self._current = ids
        self._recorded = torch.zeros(ids.numel(), dtype=torch.bool)
        self._pos = {int(i): p for p, i in enumerate(ids.tolist())}
        self.round_index += 1
        self._refreshed = False
        return ids.clone()

    def _sync_scores(self) -> None:
        import torch.distributed as dist

        if not (self.sync and dist.is_available() and dist.is_initialized()):
            self._fresh.zero_()
            return
        fresh = self._fresh.nonzero().flatten()
        vals = self.scores[fresh].clone()
        dist.all_reduce(vals, op=dist.ReduceOp.SUM)
        self.scores[fresh] = vals / dist.get_world_size()
        self._fresh.zero_()

    # ----------------------------------------------------------------------------- scores
    def record(self, batch_id: int, loss: float | Tensor) -> None:
        """Store the training loss of batch ``batch_id`` (from the forward before the step)."""
        value = float(loss.detach().item()) if isinstance(loss, Tensor) else float(loss)
        if not math.isfinite(value):
            raise ValueError(
                f"loss of batch {batch_id} is {value}; only finite losses can be ranked"
            )
        p = self._pos.get(int(batch_id))
        if p is None:
            raise ValueError(
                f"batch {batch_id} is not in the current round {self._current.tolist()}; "
                "record only batches yielded by rounds()"
            )
        if bool(self._recorded[p]):
            raise ValueError(f"batch {batch_id} was already recorded in this round")
        self._recorded[p] = True
        self.scores[int(batch_id)] = value
        self._fresh[int(batch_id)] = True
        self.steps_done += 1

    def refresh(self, scores: Tensor) -> None:
        """Replace every score with a freshly measured loss ``scores: [b]`` (the refresh option)."""
        if scores.shape != (self.num_batches,):
            raise ValueError(
                f"refresh needs scores of shape [{self.num_batches}], got {tuple(scores.shape)}"
            )
        s = scores.detach().to(torch.float64).cpu()
        if not torch.isfinite(s).all():
            raise ValueError("refresh scores must be finite")
        self._check_recorded()
        self.scores.copy_(s)
        self._fresh.fill_(True)
        self._refreshed = True

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically: scores, counters, current round, RNG."""
        return {
            "num_batches": self.num_batches,
            "delta": self.delta,
            "num_steps": self.num_steps,
            "warmup_rounds": self.warmup_rounds,
            "refresh_every": self.refresh_every,
            "scores": self.scores.clone(),
            "steps_done": self.steps_done,
            "round_index": self.round_index,
            "current": self._current.clone(),
            "recorded": self._recorded.clone(),
            "fresh": self._fresh.clone(),
            "refreshed": self._refreshed,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the configuration must match this schedule's."""
        for key in ("num_batches", "delta", "num_steps", "warmup_rounds", "refresh_every"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"state was saved with {key}={state[key]!r} but this schedule has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.scores = state["scores"].clone().to(torch.float64)
        self.steps_done = int(state["steps_done"])
        self.round_index = int(state["round_index"])
        self._current = state["current"].clone().long()
        self._recorded = state["recorded"].clone().bool()
        self._pos = {int(i): p for p, i in enumerate(self._current.tolist())}
        self._fresh = state["fresh"].clone().bool()
        self._refreshed = bool(state["refreshed"])
        if state["generator"] is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
