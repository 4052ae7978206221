"""Per-sample selection methods that high-loss batch training is compared against.

All follow "score -> select": per-item scores (losses) in, indices (or a loss) to train on out.

* Online Batch Selection (Loshchilov & Hutter, arXiv 1511.06343): rank samples by their latest
  loss (rank 0 = largest) and draw a mini-batch without replacement with
  ``p_r ∝ exp(-ln(s_e) * r / N)``, so the top / bottom probability ratio is about ``s_e``.
* Selective-Backprop (Jiang et al., arXiv 1910.00762): forward every candidate, keep it with
  probability ``F_R(loss)^beta`` (``F_R`` = empirical CDF of the last ``R`` losses, the current
  one included) and back-propagate once ``m`` kept samples have accumulated.
* Top-k in batch (OHEM, arXiv 1604.03540): mean of the ``ceil(ratio * m)`` largest losses.
* RHO-LOSS (Mindermann et al., arXiv 2206.07137): top-k of training loss minus irreducible loss.

Shapes: ``N`` samples or candidates, ``B`` batch, ``K`` selected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Sampler

from batchcraft.selection.hard import select_hard

__all__ = [
    "Batch",
    "OnlineBatchSelectionSampler",
    "SelectiveBackprop",
    "rank_based_probs",
    "reducible_loss_select",
    "topk_in_batch_loss",
]


def rank_based_probs(scores: Tensor, pressure: float) -> Tensor:
    """Sampling probabilities from loss ranks (Online Batch Selection).

    Args:
        scores: ``[N]`` latest losses (``+inf`` = never seen, ranked first; no NaN).
        pressure: ``s_e >= 1``; ``p_0 / p_{N-1} = s_e^((N-1)/N)``; 1 gives the uniform distribution.

    Returns:
        ``[N]`` float64 probabilities indexed like ``scores`` (summing to 1).
    """
    if scores.dim() != 1 or scores.numel() < 1:
        raise ValueError(f"scores must be a non-empty 1-D tensor [N], got {tuple(scores.shape)}")
    if not pressure >= 1.0:
        raise ValueError(f"pressure (s_e) must be >= 1 (1 = uniform), got {pressure}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n = scores.numel()
    order = torch.sort(scores, descending=True, stable=True).indices  # rank r -> sample
    by_rank = torch.exp(-math.log(pressure) * torch.arange(n, dtype=torch.float64) / n)
    probs = torch.empty(n, dtype=torch.float64)
    probs[order] = by_rank / by_rank.sum()
    return probs


class OnlineBatchSelectionSampler(Sampler[list[int]]):
    """Batches drawn by loss rank (Online Batch Selection); feed losses back with :meth:`record`.

    Epoch 0 is one random pass over the data (every sample gets a loss); later epochs draw
    ``N // m`` batches, each without replacement from :func:`rank_based_probs` of the current
    scores. Probabilities are recomputed for every batch, so use ``num_workers=0`` (prefetching
    workers would draw on stale scores).

    Args:
        num_samples: ``N``.
        batch_size: ``m``.
        pressure: selection pressure ``s_e`` (library default 100).
        recompute_every: if set, :attr:`recompute_due` asks for a full re-score (:meth:`set_scores`)
            every that many epochs.
        generator: private RNG.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        pressure: float = 100.0,
        recompute_every: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1 (the dataset is empty)")
        if not 1 <= batch_size <= num_samples:
            raise ValueError(
                f"batch_size must be in [1, num_samples={num_samples}], got {batch_size}"
            )
        if not pressure >= 1.0:
            raise ValueError(f"pressure must be >= 1, got {pressure}")
        if recompute_every is not None and recompute_every < 1:
            raise ValueError(f"recompute_every must be None or >= 1, got {recompute_every}")
        self.num_samples, self.batch_size, self.pressure = num_samples, batch_size, pressure
        self.recompute_every = recompute_every
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.scores = torch.full((num_samples,), math.inf, dtype=torch.float64)
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        m = self.batch_size
        if self.epoch == 0:
            perm = torch.randperm(self.num_samples, generator=self.generator)
            for j in range(len(self)):
                yield perm[j * m : (j + 1) * m].tolist()
        else:
            for _ in range(len(self)):
                p = rank_based_probs(self.scores, self.pressure)
                yield torch.multinomial(p, m, replacement=False, generator=self.generator).tolist()
        self.epoch += 1

    @property
    def recompute_due(self) -> bool:
        """Whether a full re-score is due before the next epoch."""
        r = self.recompute_every
        return r is not None and self.epoch > 0 and self.epoch % r == 0

    def record(self, indices: Tensor | list[int], losses: Tensor) -> None:
        """Store per-sample losses ``losses: [B]`` of the samples ``indices: [B]``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        vals = losses.detach().to(torch.float64).cpu().reshape(-1)
        if idx.shape != vals.shape:
            raise ValueError(f"indices {tuple(idx.shape)} and losses {tuple(vals.shape)} differ")
        if not torch.isfinite(vals).all():
            raise ValueError("losses must be finite")
        self.scores[idx] = vals

    def set_scores(self, scores: Tensor) -> None:
        """Replace all scores with ``scores: [N]`` (a full re-score)."""
        if scores.shape != (self.num_samples,):
            raise ValueError(
                f"scores must have shape [{self.num_samples}], got {tuple(scores.shape)}"
            )
        self.scores = scores.detach().to(torch.float64).cpu().clone()

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.clone(), "epoch": self.epoch,
                "generator": self.generator.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state["scores"].clone()
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])


class Batch(NamedTuple):
    """A mini-batch assembled by :class:`SelectiveBackprop`: ``inputs: [B, ...]``, ``targets: [B, ...]``."""

    inputs: Tensor
    targets: Tensor


class SelectiveBackprop:
    """Keep each forwarded sample with probability ``F_R(loss)^beta``; emit full batches.

    Args:
        batch_size: samples per back-propagated batch ``m``.
        beta: selectivity (library default 1; larger keeps fewer low-loss samples).
        history: ``R``, number of recent losses in the empirical CDF (library default 1024).
        generator: private RNG of the keep decisions.
    """

    def __init__(
        self,
        batch_size: int,
        *,
        beta: float = 1.0,
        history: int = 1024,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.batch_size, self.beta, self.history = batch_size, float(beta), history
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._hist = torch.empty(history, dtype=torch.float64)
        self._count = 0  # losses seen so far
        self._inputs: list[Tensor] = []
        self._targets: list[Tensor] = []
        self.offered = 0
        self.kept = 0

    def _push(self, loss: float) -> float:
        """Insert ``loss`` into the history and return ``F_R(loss)`` (fraction of history <= loss)."""
        self._hist[self._count % self.history] = loss
        self._count += 1
        seen = self._hist[: min(self._count, self.history)]
        return float((seen <= loss).double().mean())

    def keep_probability(self, loss: float) -> float:
        """Push ``loss`` into the history and return its keep probability ``F_R(loss)^beta``."""
        return self._push(float(loss)) ** self.beta

    @property
    def pending(self) -> int:
        """Kept samples waiting for a full batch."""
        return sum(x.shape[0] for x in self._inputs)

    def offer(self, inputs: Tensor, targets: Tensor, per_sample_losses: Tensor) -> Batch | None:
        """Offer forwarded candidates ``inputs: [B, ...]`` with their losses ``[B]``.

        Returns:
            A :class:`Batch` of exactly ``m`` kept samples once that many have accumulated
            (surplus stays pending for the next call), else ``None``.
        """
        losses = per_sample_losses.detach().to(torch.float64).cpu().reshape(-1)
        if losses.shape[0] != inputs.shape[0] or targets.shape[0] != inputs.shape[0]:
            raise ValueError("inputs, targets and per_sample_losses need the same leading size B")
        if not torch.isfinite(losses).all():
            raise ValueError("per_sample_losses must be finite")
        u = torch.rand(losses.shape[0], generator=self.generator, dtype=torch.float64)
        keep = torch.tensor([u[j].item() < self.keep_probability(losses[j].item())
                             for j in range(losses.shape[0])], dtype=torch.bool)  # fmt: skip
        self.offered += losses.shape[0]
        self.kept += int(keep.sum())
        if keep.any():
            self._inputs.append(inputs[keep.to(inputs.device)])
            self._targets.append(targets[keep.to(targets.device)])
        if self.pending < self.batch_size:
            return None
        x, y = torch.cat(self._inputs), torch.cat(self._targets)
        m = self.batch_size
        self._inputs, self._targets = ([x[m:]], [y[m:]]) if x.shape[0] > m else ([], [])
        return Batch(x[:m], y[:m])


def topk_in_batch_loss(per_sample_losses: Tensor, ratio: float = 0.5) -> Tensor:
    """Mean of the ``ceil(ratio * B)`` largest per-sample losses ``[B]`` (a scalar, differentiable)."""
    if per_sample_losses.dim() != 1 or per_sample_losses.numel() < 1:
        raise ValueError(
            f"per_sample_losses must be non-empty 1-D [B], got {tuple(per_sample_losses.shape)}"
        )
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    k = max(1, math.ceil(round(ratio * per_sample_losses.numel(), 9)))
    return per_sample_losses.topk(k).values.mean()


def reducible_loss_select(losses: Tensor, irreducible: Tensor, k: int) -> Tensor:
    """RHO-LOSS: the ``k`` candidates with the largest ``losses - irreducible`` (both ``[N]``).

    Returns:
        ``[K]`` int64 indices, ascending; ties go to the lower index.
    """
    if losses.shape != irreducible.shape or losses.dim() != 1:
        raise ValueError(
            f"losses {tuple(losses.shape)} and irreducible {tuple(irreducible.shape)} must both be [N]"
        )
    return select_hard(losses.detach().double() - irreducible.detach().double(), k)
