"""Coreset selection from a pool: composition, per-source ranking, weights (the paper's steps 1-7).

:func:`colm_select` is the pure function on a feature matrix; :class:`CoLMSelector` wires a
feature probe, the small-source rule and the selector-side Adam moments around it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from batchcraft.selection.colm.composition import (
    keep_mask,
    small_sources_from_counts,
    source_budgets,
)
from batchcraft.selection.colm.facility import (
    cluster_weights,
    facility_location,
    facility_objective,
    l1_similarity,
)
from batchcraft.selection.colm.normalize import AdamFeatureNormalizer, topk_mask

__all__ = ["CoLMSelector", "ColmSelection", "FeatureProbe", "colm_select", "subset_batch"]


@dataclass
class ColmSelection:
    """A coreset of a pool.

    Attributes:
        idx: ``[K]`` pool indices (kept examples first, in pool order, then picks per source).
        weights: ``[K]`` loss weights (ones in uniform mode; mean 1 in cluster mode).
        kept: ``[K]`` whether each entry was kept whole (small source) rather than ranked.
        stats: counts and diagnostics (``n_kept``, ``budgets``, ``n_nonfinite``, ``objective``).
    """

    idx: Tensor
    weights: Tensor
    kept: Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class FeatureProbe(Protocol):
    """What :class:`CoLMSelector` needs from a probe."""

    @property
    def dim(self) -> int: ...

    def features(self, batch: Mapping[str, Tensor]) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def colm_select(
    features: Tensor,
    k: int,
    *,
    sources: Tensor | None = None,
    keep: Tensor | None = None,
    h: int | None = None,
    similarity: str = "l1",
    weights: str = "uniform",
    ranking: str = "facility",
    normalizer: AdamFeatureNormalizer | None = None,
    generator: torch.Generator | None = None,
    impl: str = "auto",
) -> ColmSelection:
    """Select ``k`` of ``N`` pool rows.

    Args:
        features: ``[N, F]`` raw features (rows where ``keep`` is true are ignored), or
            ``[N - |keep|, F]``: only the non-kept rows, in pool order (never featurise kept).
        k: coreset size ``b``, ``1 <= k <= N``.
        sources: ``[N]`` source ids (``None``: one source, no per-source quotas).
        keep: ``[N]`` bool, rows kept whole (small sources).
        h: top-``h`` coordinates per source after normalisation (``None``: all).
        similarity: ``"l1"`` (``S = max(D) - D``).
        weights: ``"uniform"`` or ``"cluster"`` (kept 1, picks their cluster size; mean-normalised
            so the weights sum to ``k``).
        ranking: ``"facility"`` or ``"random"`` (structure-matched random baseline; uses
            ``generator``).
        normalizer: Adam normaliser; its moments are committed from the picked rows.
        generator: private generator for ``ranking="random"``.
        impl: facility-location implementation (see :func:`facility_location`).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D [N, F], got shape {tuple(features.shape)}")
    if keep is not None:
        n = keep.shape[0]
    else:
        n = sources.shape[0] if sources is not None else features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N={n}], got {k}")
    if similarity != "l1":
        raise ValueError(f"similarity must be 'l1', got {similarity!r}")
    if weights not in ("uniform", "cluster"):
        raise ValueError(f"weights must be 'uniform' or 'cluster', got {weights!r}")
    if ranking not in ("facility", "random"):
        raise ValueError(f"ranking must be 'facility' or 'random', got {ranking!r}")
    dev = features.device
    src = torch.zeros(n, dtype=torch.long, device=dev) if sources is None else sources.to(dev)
    kp = torch.zeros(n, dtype=torch.bool, device=dev) if keep is None else keep.to(dev)
    if src.shape != (n,) or kp.shape != (n,):
        raise ValueError(
            f"sources and keep must be [N={n}], got {tuple(src.shape)}, {tuple(kp.shape)}"
        )
    kept_idx = torch.nonzero(kp).flatten()
    stats: dict[str, Any] = {"n_kept_pool": int(kept_idx.numel()), "n_nonfinite": 0}
    if kept_idx.numel() >= k:
        idx = kept_idx[:k]
        stats["budgets"] = {}
        return ColmSelection(
            idx, torch.ones(k, device=dev), torch.ones(k, dtype=torch.bool, device=dev), stats
        )
    free = torch.nonzero(~kp).flatten()  # pool rows to rank
    if features.shape[0] == n:
        frow = free
    elif features.shape[0] == free.numel():
        frow = torch.arange(free.numel(), device=dev)
    else:
        raise ValueError(
            f"features must have N={n} rows or one per non-kept row ({free.numel()}), "
            f"got {features.shape[0]}"
        )
    finite = torch.isfinite(features).all(dim=1)[frow]
    cand, cand_f = free[finite], frow[finite]  # R: big-source candidates [N'], feature rows
    n_bad = int((~finite).sum())
    stats["n_nonfinite"] = n_bad
    if n_bad:
        warnings.warn(f"{n_bad} pool rows have non-finite features and were excluded", stacklevel=2)
    budget = k - kept_idx.numel()
    if budget > cand.numel():
        raise ValueError(
            f"only {cand.numel()} finite big-source candidates for {budget} picks; "
            "lower k or check the features"
        )
    g = features[cand_f] if cand_f.numel() != features.shape[0] else features  # [N', F]
    budgets = source_budgets(src[cand], budget)
    stats["budgets"] = budgets
    picks, pick_w, objective = [], [], 0.0
    for q, bq in sorted(budgets.items()):
        if bq == 0:
            continue
        rows = torch.nonzero(src[cand] == q).flatten()  # positions in R
        if bq == rows.numel():
            sel, w = rows, torch.ones(bq, device=dev)
        elif ranking == "random":
            perm = torch.randperm(rows.numel(), generator=generator)[:bq].to(dev)
            sel, w = rows[perm], torch.ones(bq, device=dev)
        else:
            # normalise one source at a time: peak memory ~ n_q x F, not N' x F
            uq = g[rows] if normalizer is None else normalizer.transform(g[rows])[0]  # [n_q, F]
            if h is not None:
                uq = uq[:, topk_mask(uq, h)]  # [n_q, h]
            sim = l1_similarity(uq)  # [n_q, n_q]
            loc = facility_location(sim, bq, impl=impl)
            objective += facility_objective(sim, loc)
            sel, w = rows[loc], cluster_weights(sim, loc).to(dev)
        picks.append(sel)
        pick_w.append(w.float())
    stats["objective"] = objective
    pick_pos = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long, device=dev)
    if normalizer is not None:
        _, big_m, big_v = normalizer.transform(g[pick_pos])
        normalizer.commit(big_m, big_v)
    idx = torch.cat([kept_idx, cand[pick_pos]])
    kept = torch.cat(
        [torch.ones_like(kept_idx, dtype=torch.bool), torch.zeros_like(pick_pos, dtype=torch.bool)]
    )
    if weights == "uniform":
        wts = torch.ones(k, device=dev)
    else:
        wts = torch.cat([torch.ones(kept_idx.numel(), device=dev), *pick_w])
        wts = wts * (k / wts.sum())
    return ColmSelection(idx, wts, kept, stats)


def subset_batch(batch: Mapping[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Rows ``idx`` of every ``[N, ...]`` tensor in ``batch``."""
    return {k: v[idx.to(v.device)] for k, v in batch.items()}


class CoLMSelector:
    """CoLM coreset selection for one optimizer step, independent of any trainer.

    Args:
        probe: feature probe (:class:`~batchcraft.selection.colm.probes.ZOProbe`, ...).
        coreset_size: ``b``.
        source_counts: dataset size per source, for the small-source rule (the paper's: a
            source is small when its dataset count is below the mean count).
        small_sources: explicit small source ids (overrides ``source_counts``), or
            ``"per_pool"``: decide the small sources from each pool's own counts with
            ``small_rule`` (the set then changes from pool to pool; not the paper's rule).
            With ``keep_small`` one of ``source_counts`` / ``small_sources`` is required.
        small_rule: ``"mean"`` or a number (see :func:`small_sources_from_counts`).
        keep_small: keep every pool example of a small source.
        per_source: per-source quotas and ranking (else one group).
        normalize: ``"adam"`` or ``None``.
        h: top-``h`` sparsification (``None``: all coordinates).
        similarity: ``"l1"``.
        weights: ``"uniform"`` or ``"cluster"``.
        ranking: ``"facility"`` or ``"random"`` (structure-matched random baseline).
        generator: private generator for random ranking.
        betas, eps: Adam normaliser settings.
    """

    def __init__(
        self,
        probe: FeatureProbe,
        coreset_size: int,
        *,
        source_counts: Tensor | Mapping[int, int] | None = None,
        small_sources: set[int] | frozenset[int] | str | None = None,
        small_rule: str | float = "mean",
        keep_small: bool = True,
        per_source: bool = True,
        normalize: str | None = "adam",
        h: int | None = 2560,
        similarity: str = "l1",
        weights: str = "uniform",
        ranking: str = "facility",
        generator: torch.Generator | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if coreset_size < 1:
            raise ValueError(f"coreset_size must be >= 1, got {coreset_size}")
        if normalize not in ("adam", None):
            raise ValueError(f"normalize must be 'adam' or None, got {normalize!r}")
        self.probe, self.coreset_size = probe, int(coreset_size)
        self.small: set[int] | None  # None: decided from each pool's own counts
        if isinstance(small_sources, str):
            if small_sources != "per_pool":
                raise ValueError(
                    f"small_sources must be a set of source ids or 'per_pool', got {small_sources!r}"
                )
            self.small = None
        elif small_sources is not None:
            self.small = {int(q) for q in small_sources}
        elif source_counts is not None:
            self.small = small_sources_from_counts(source_counts, rule=small_rule)
        elif keep_small:
            raise ValueError(
                "keep_small=True needs to know which sources are small: pass source_counts "
                "(dataset examples per source, the paper's rule), small_sources={ids}, or "
                "small_sources='per_pool' to decide from each pool's own counts"
            )
        else:
            self.small = set()  # unused without keep_small
        self.small_rule, self.keep_small, self.per_source = small_rule, keep_small, per_source
        self.h, self.similarity, self.weights, self.ranking = h, similarity, weights, ranking
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.normalizer = (
            AdamFeatureNormalizer(probe.dim, betas=betas, eps=eps) if normalize == "adam" else None
        )
        self.steps = 0

    def _small_for(self, sources: Tensor) -> set[int]:
        if self.small is not None:
            return self.small
        q, c = torch.unique(sources, return_counts=True)
        return small_sources_from_counts(
            dict(zip(q.tolist(), c.tolist(), strict=True)), rule=self.small_rule
        )

    def select(self, batch: Mapping[str, Tensor]) -> ColmSelection:
        """Choose ``b`` of the ``N`` pool examples.

        Args:
            batch: model inputs ``[N, ...]`` plus ``labels: [N, T]`` and ``source: [N]``.
        """
        if "source" not in batch:
            raise ValueError("batch must hold 'source' [N] (integer source id per example)")
        sources = batch["source"]
        n = sources.shape[0]
        if self.coreset_size > n:
            raise ValueError(f"coreset_size ({self.coreset_size}) must be <= pool size ({n})")
        keep = keep_mask(sources, self._small_for(sources)) if self.keep_small else None
        kept_n = 0 if keep is None else int(keep.sum())
        if kept_n < self.coreset_size and self.ranking == "facility":
            rows = torch.nonzero(~keep).flatten() if keep is not None else torch.arange(n)
            feats = self.probe.features(subset_batch(batch, rows)).cpu()  # [N - |kept|, F]
        else:  # nothing to rank with features: no probe call
            feats = torch.zeros(n - kept_n, 1)
        sel = colm_select(
            feats,
            self.coreset_size,
            sources=sources.cpu() if self.per_source else None,
            keep=None if keep is None else keep.cpu(),
            h=self.h,
            similarity=self.similarity,
            weights=self.weights,
            ranking=self.ranking,
            normalizer=self.normalizer if self.ranking == "facility" else None,
            generator=self.generator,
        )
        self.steps += 1
        return sel

    def state_dict(self) -> dict[str, Any]:
        """Normaliser moments, probe state, generator state and step count."""
        return {
            "steps": self.steps,
            "normalizer": None if self.normalizer is None else self.normalizer.state_dict(),
            "probe": self.probe.state_dict(),
            "generator": self.generator.get_state(),
            "small": None if self.small is None else sorted(self.small),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        if self.normalizer is not None and state["normalizer"] is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        self.probe.load_state_dict(state["probe"])
        self.generator.set_state(state["generator"])
        self.small = None if state["small"] is None else set(state["small"])
