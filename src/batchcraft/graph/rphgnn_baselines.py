"""Pre-computation baselines in the same format as RpHGNN's groups.

* :func:`relation_wise_precompute` (SeHGNN-style): one tensor per metapath of length ``<= K`` that
  ends at the target, mean aggregation along the path, no squashing: the number of tensors grows
  geometrically with ``K``.
* :func:`nars_precompute` (NARS/SIGN-style): representation-wise; ``num_subsets`` random relation
  subsets, each propagated as one averaged homogeneous-like operator for ``K`` hops, averaged over
  subsets, hops concatenated into one group.
* :func:`feature_groups`: the target's own features only (the MLP baseline).

All return ``{key: [N_τ, n_j, m_j]}`` so :class:`~batchcraft.graph.rphgnn_model.RpHGNN` (with depth-1
groups = per-path projection + concat fusion + MLP) trains on them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchcraft.graph.hetero import EdgeType, build_csr, canonicalize_relations, csr_mean_propagate
from batchcraft.graph.rphgnn import check_positive_int, initial_features

__all__ = ["feature_groups", "metapath_count", "nars_precompute", "relation_wise_precompute"]


def feature_groups(
    x_target: Tensor, *, storage_dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """The MLP baseline's single group ``{"self": [N_τ, 1, F_τ]}``."""
    return {"self": x_target.to(storage_dtype)[:, None, :]}


def metapath_count(
    edge_index_dict: dict[EdgeType, Tensor], num_nodes_dict: dict[str, int], target: str, K: int
) -> int:
    """Number of directed metapaths of length 1..K ending at ``target`` (after canonicalisation)."""
    rels, _ = canonicalize_relations(edge_index_dict, num_nodes_dict)
    ends = {t: int(t == target) for t in num_nodes_dict}  # paths of length 0 ending at target
    total = 0
    for _ in range(K):  # paths starting at t of length h+1 = Σ_{r: t→d} paths from d of length h
        nxt = dict.fromkeys(num_nodes_dict, 0)
        for s, _, d in rels:
            nxt[s] += ends[d]
        ends = nxt
        total += sum(ends.values())
    return total


def relation_wise_precompute(
    x_dict: dict[str, Tensor | None],
    edge_index_dict: dict[EdgeType, Tensor],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    num_hops: int = 2,
    embedding_size: int = 512,
    use_all_features: bool = True,
    include_self: bool = True,
    generator: torch.Generator | None = None,
    storage_dtype: torch.dtype = torch.float16,
    compute_dtype: torch.dtype = torch.float32,
    chunk_rows: int | None = 65536,
) -> dict[str, Tensor]:
    """SeHGNN-style relation-wise pre-computation: one ``[N_τ, 1, d_src]`` per metapath.

    A path ``t_0 →r_1→ t_1 … →r_h→ τ`` gives ``Â_{r_h} ⋯ Â_{r_1} X_{t_0}``; keys are
    ``"mp:<r_1>|…|<r_h>"`` (relation names) plus ``"self"``.
    """
    check_positive_int("num_hops", num_hops)
    check_positive_int("embedding_size", embedding_size)
    if target not in num_nodes_dict:
        raise ValueError(f"target {target!r} is not a node type; types: {sorted(num_nodes_dict)}")
    rels, _ = canonicalize_relations(edge_index_dict, num_nodes_dict)
    X = initial_features(
        x_dict, num_nodes_dict, target, embedding_size=embedding_size,
        use_all_features=use_all_features, generator=generator, dtype=compute_dtype,
    )  # fmt: skip
    csr = {r: build_csr(ei, num_nodes_dict[r[2]]) for r, ei in rels.items()}
    # frontier: {(path, end type): features [N_end, d]} for paths of the current length
    frontier: dict[tuple[tuple[str, ...], str], Tensor] = {((), t): X[t] for t in sorted(X)}
    out: dict[str, Tensor] = {}
    if include_self:
        out["self"] = X[target].to(storage_dtype)[:, None, :]
    for hop in range(1, num_hops + 1):
        remaining = num_hops - hop
        nxt: dict[tuple[tuple[str, ...], str], Tensor] = {}
        for (path, end), feat in frontier.items():
            for r in sorted(rels):
                if r[0] != end or not _can_reach(rels, r[2], target, remaining):
                    continue
                h = csr_mean_propagate(*csr[r], feat, chunk_rows=chunk_rows)
                key = (*path, "__".join(r))
                if r[2] == target:
                    out["mp:" + "|".join(key)] = h.to(storage_dtype)[:, None, :]
                if remaining:
                    nxt[(key, r[2])] = h
        frontier = nxt
    return out


def _can_reach(rels: dict[EdgeType, Tensor], t: str, target: str, hops: int) -> bool:
    reach = {t}
    for _ in range(hops):
        reach |= {d for s, _, d in rels if s in reach}
    return target in reach


def nars_precompute(
    x_dict: dict[str, Tensor | None],
    edge_index_dict: dict[EdgeType, Tensor],
    num_nodes_dict: dict[str, int],
    target: str,
    *,
    num_hops: int = 2,
    num_subsets: int = 4,
    embedding_size: int = 512,
    generator: torch.Generator | None = None,
    storage_dtype: torch.dtype = torch.float16,
    chunk_rows: int | None = 65536,
) -> dict[str, Tensor]:
    """NARS/SIGN-style representation-wise pre-computation: ``{"hops": [N_τ, K + 1, d_τ]}``.

    Every type gets features of width ``e`` (own features randomly projected, or random); per
    random relation subset ``R`` a hop is ``X_t ← mean_{r ∈ R, dst(r)=t} Â_r X_src(r)``; the
    target's hop representations are averaged over subsets.
    """
    check_positive_int("num_hops", num_hops)
    check_positive_int("num_subsets", num_subsets)
    check_positive_int("embedding_size", embedding_size)
    if target not in num_nodes_dict:
        raise ValueError(f"target {target!r} is not a node type; types: {sorted(num_nodes_dict)}")
    rels, _ = canonicalize_relations(edge_index_dict, num_nodes_dict)
    X0 = initial_features(
        x_dict, num_nodes_dict, target, embedding_size=embedding_size, use_all_features=True,
        generator=generator, dtype=torch.float32,
    )  # fmt: skip
    for t in sorted(X0):  # one common width e (representation-wise)
        if X0[t].shape[1] != embedding_size:
            p = torch.randn(X0[t].shape[1], embedding_size, generator=generator)
            X0[t] = X0[t] @ (p / X0[t].shape[1] ** 0.5)
    csr = {r: build_csr(ei, num_nodes_dict[r[2]]) for r, ei in rels.items()}
    names = sorted(rels)
    acc = torch.zeros(num_nodes_dict[target], num_hops + 1, embedding_size)
    for _ in range(num_subsets):
        keep = torch.rand(len(names), generator=generator) < 0.5
        subset = [r for r, k in zip(names, keep.tolist(), strict=True) if k] or names
        X = dict(X0)
        acc[:, 0] += X[target]
        for hop in range(1, num_hops + 1):
            new = {}
            for t in X:
                into = [r for r in subset if r[2] == t]
                if into:
                    hs = [csr_mean_propagate(*csr[r], X[r[0]], chunk_rows=chunk_rows) for r in into]
                    new[t] = torch.stack(hs).mean(0)
                else:
                    new[t] = torch.zeros_like(X[t])
            X = new
            acc[:, hop] += X[target]
    return {"hops": (acc / num_subsets).to(storage_dtype)}
