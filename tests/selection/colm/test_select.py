"""colm_select and CoLMSelector: composition invariants, weights, determinism, state, errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from batchcraft.selection.colm import AdamFeatureNormalizer, CoLMSelector, colm_select


class CountingProbe:
    """Features = a fixed random row per pool position id; counts which ids were featurised."""

    def __init__(self, dim: int = 6, seed: int = 0) -> None:
        self._dim, self.seed = dim, seed
        self.seen: list[int] = []

    @property
    def dim(self) -> int:
        return self._dim

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"][:, 0]
        self.seen += ids.tolist()
        g = torch.Generator().manual_seed(self.seed)
        table = torch.randn(1000, self._dim, generator=g)
        return table[ids]

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = list(state["seen"])


def _pool(sources: list[int]) -> dict[str, torch.Tensor]:
    n = len(sources)
    ids = torch.arange(n)[:, None].repeat(1, 3)
    return {"input_ids": ids, "labels": ids.clone(), "source": torch.tensor(sources)}


SOURCES = [0] * 20 + [1] * 12 + [2] * 3 + [3] * 2 + [0] * 5 + [4] * 1 + [1] * 5


def test_small_sources_kept_and_never_featurised():
    probe = CountingProbe()
    sel = CoLMSelector(probe, 16, small_sources={2, 3, 4}, h=None)
    pool = _pool(SOURCES)
    out = sel.select(pool)
    src = pool["source"]
    small_pos = [i for i, s in enumerate(SOURCES) if s in (2, 3, 4)]
    assert out.idx[: len(small_pos)].tolist() == small_pos
    assert out.kept.sum() == len(small_pos) and out.kept[: len(small_pos)].all()
    assert not set(probe.seen) & set(small_pos)  # kept examples never featurised
    assert len(probe.seen) == len(SOURCES) - len(small_pos)
    assert out.idx.numel() == 16 and out.idx.unique().numel() == 16
    # quotas: b' = 10 over (25, 17): floors (5, 4), remainder to the lower b_q -> source 1
    assert out.stats["budgets"] == {0: 5, 1: 5}
    assert (src[out.idx[~out.kept]] == 0).sum() == 5


def test_more_kept_than_budget_returns_first_in_pool_order():
    probe = CountingProbe()
    sel = CoLMSelector(probe, 4, small_sources={2, 3, 4})
    out = sel.select(_pool(SOURCES))
    small_pos = [i for i, s in enumerate(SOURCES) if s in (2, 3, 4)]
    assert out.idx.tolist() == small_pos[:4]
    assert probe.seen == []  # no ranking needed, no features computed


@pytest.mark.parametrize("k", [1, 7, 16, 48], ids=lambda k: f"k{k}")
@pytest.mark.parametrize("weights", ["uniform", "cluster"])
def test_size_uniqueness_and_weight_rules(k, weights):
    g = torch.Generator().manual_seed(k)
    feats = torch.randn(48, 5, generator=g)
    src = torch.tensor(SOURCES)
    keep = torch.isin(src, torch.tensor([3, 4]))
    sel = colm_select(feats, k, sources=src, keep=keep, weights=weights)
    assert sel.idx.numel() == k and sel.idx.unique().numel() == k
    assert ((sel.idx >= 0) & (sel.idx < 48)).all()
    if weights == "uniform":
        assert torch.equal(sel.weights, torch.ones(k))
    else:
        torch.testing.assert_close(sel.weights.sum(), torch.tensor(float(k)))


def test_cluster_weights_before_normalisation_sum_to_n_q():
    feats = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(12, dtype=torch.bool)
    keep[:2] = True
    sel = colm_select(feats, 5, keep=keep, weights="cluster")
    # raw cluster sizes: kept weight 1 each, picks sum to the 10 candidates; total 12
    # normalised to sum k = 5 -> scale 5 / 12
    torch.testing.assert_close(sel.weights[:2], torch.full((2,), 5 / 12))
    torch.testing.assert_close(sel.weights[2:].sum(), torch.tensor(10 * 5 / 12))


def test_compact_features_equal_full_features():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(48, 5, generator=g)
    src = torch.tensor(SOURCES)
    keep = torch.isin(src, torch.tensor([2, 3, 4]))
    full = colm_select(feats, 20, sources=src, keep=keep, weights="cluster", h=3)
    compact = colm_select(feats[~keep], 20, sources=src, keep=keep, weights="cluster", h=3)
    assert torch.equal(full.idx, compact.idx) and torch.equal(full.weights, compact.weights)


def test_nonfinite_rows_excluded_with_warning():
    feats = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    feats[3, 1] = float("nan")
    feats[5] = 0.0  # zero features are valid
    with pytest.warns(UserWarning, match="1 pool rows have non-finite"):
        sel = colm_select(feats, 9)
    assert 3 not in sel.idx.tolist() and 5 in sel.idx.tolist()
    assert sel.stats["n_nonfinite"] == 1
    with (
        pytest.raises(ValueError, match="finite big-source candidates"),
        pytest.warns(UserWarning),
    ):
        colm_select(feats, 10)


def test_selector_determinism_and_state_round_trip():
    def make() -> CoLMSelector:
        return CoLMSelector(CountingProbe(), 12, small_sources={3, 4}, h=3)

    a, b = make(), make()
    pools = [_pool(SOURCES[i:] + SOURCES[:i]) for i in (0, 5, 11)]
    for p in pools:
        assert torch.equal(a.select(p).idx, b.select(p).idx)
    c = make()
    c.load_state_dict(a.state_dict())
    assert c.normalizer is not None and a.normalizer is not None
    assert torch.equal(c.normalizer.m, a.normalizer.m) and c.steps == 3
    nxt = _pool(SOURCES[7:] + SOURCES[:7])
    assert torch.equal(c.select(nxt).idx, a.select(nxt).idx)


def test_random_ranking_is_structure_matched_and_seeded():
    def sel(seed: int) -> torch.Tensor:
        s = CoLMSelector(
            CountingProbe(),
            16,
            small_sources={2, 3, 4},
            ranking="random",
            generator=torch.Generator().manual_seed(seed),
        )
        return s.select(_pool(SOURCES)).idx

    a, b, c = sel(0), sel(0), sel(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    src = torch.tensor(SOURCES)
    for idx in (a, c):
        assert (src[idx] == 0).sum() == 5 and (src[idx] == 1).sum() == 5


def test_small_sources_must_be_explicit():
    # keep_small without dataset counts or a set used to fall back silently to per-pool counts
    with pytest.raises(ValueError, match=r"source_counts .* or small_sources='per_pool'"):
        CoLMSelector(CountingProbe(), 16, h=None)
    with pytest.raises(ValueError, match="'per_pool'"):
        CoLMSelector(CountingProbe(), 16, small_sources="pool")
    # no keep-small rule needed when nothing is kept
    assert (
        CoLMSelector(CountingProbe(), 16, keep_small=False).select(_pool(SOURCES)).kept.sum() == 0
    )


def test_per_pool_rule_is_opt_in_and_follows_each_pool():
    sel = CoLMSelector(CountingProbe(), 8, h=None, small_sources="per_pool")
    # pool counts (source: n) = 0: 25, 1: 17, 2: 3, 3: 2, 4: 1; mean 9.6 -> small = {2, 3, 4}
    out = sel.select(_pool(SOURCES))
    assert out.kept.sum() == 6
    # a different pool: 0: 4, 1: 4, 2: 3 (mean 3.67) -> only source 2 is small here
    pool = _pool([0] * 4 + [1] * 4 + [2] * 3)
    out = sel.select(pool)
    assert pool["source"][out.idx[out.kept]].tolist() == [2, 2, 2]
    assert sel.state_dict()["small"] is None


def test_errors():
    feats = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"k must be in \[1, N=5\]"):
        colm_select(feats, 0)
    with pytest.raises(ValueError, match="weights must be"):
        colm_select(feats, 2, weights="size")
    with pytest.raises(ValueError, match="similarity must be"):
        colm_select(feats, 2, similarity="cosine")
    with pytest.raises(ValueError, match="ranking must be"):
        colm_select(feats, 2, ranking="loss")
    with pytest.raises(ValueError, match=r"sources and keep must be \[N=5\]"):
        colm_select(
            feats,
            2,
            sources=torch.zeros(4, dtype=torch.long),
            keep=torch.zeros(5, dtype=torch.bool),
        )
    with pytest.raises(
        ValueError, match=r"features must have N=6 rows or one per non-kept row \(4\)"
    ):
        keep6 = torch.tensor([True, True, False, False, False, False])
        colm_select(feats, 3, keep=keep6)
    with pytest.raises(ValueError, match="coreset_size must be >= 1"):
        CoLMSelector(CountingProbe(), 0, small_sources=set())
    with pytest.raises(ValueError, match="normalize must be"):
        CoLMSelector(CountingProbe(), 2, normalize="rms", small_sources=set())
    sel = CoLMSelector(CountingProbe(), 99, small_sources=set())
    with pytest.raises(ValueError, match=r"coreset_size \(99\) must be <= pool size"):
        sel.select(_pool(SOURCES))
    with pytest.raises(ValueError, match="'source'"):
        sel.select({"input_ids": torch.zeros(3, 2), "labels": torch.zeros(3, 2)})
    assert isinstance(AdamFeatureNormalizer(2), AdamFeatureNormalizer)


def test_small_source_fraction_in_coresets_on_the_mixture():
    from batchcraft.data.mixture import make_mixture

    mix = make_mixture((2000, 800, 300, 100, 40, 15, 8, 4), seed=0, eval_size=1)
    small = torch.tensor(sorted(CoLMSelector(CountingProbe(), 1, source_counts=mix.counts).small))
    sel = CoLMSelector(
        CountingProbe(),
        16,
        source_counts=mix.counts,
        ranking="random",
        generator=torch.Generator().manual_seed(0),
    )
    gen = torch.Generator().manual_seed(1)
    pool_frac, core_frac = [], []
    for _ in range(60):
        pool = mix.sample_pool(32, generator=gen)
        out = sel.select(pool)
        is_small = torch.isin(pool["source"], small)
        pool_frac.append(float(is_small.float().mean()))
        core_frac.append(float(is_small[out.idx].float().mean()))
        assert is_small[out.idx].sum() == min(int(is_small.sum()), 16)  # all kept
    p, c = sum(pool_frac) / 60, sum(core_frac) / 60
    assert c == pytest.approx(p * 32 / 16, rel=1e-9)  # every small example kept: x B/b
