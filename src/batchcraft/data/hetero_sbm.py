"""A seeded heterogeneous stochastic block model: the embedded default dataset of RpHGNN.

``paper`` (target; ``C`` classes; pure-noise features), ``author`` (featureless, each with a home
class) and ``venue`` (featureless, each biased to one class). Each paper links to
``authors_per_paper`` authors, each from its own class with probability ``p_in`` (else from any
class), and to one venue, of its own class with probability ``p_venue``. The paper features carry no
label information, so a feature-only MLP is at chance; labels are recoverable only by aggregating
over papers that share authors or venues (2-hop structure).
"""

from __future__ import annotations

import torch

from batchcraft.data.hetero_graph import HeteroGraph
from batchcraft.data.hgb import HGBData

__all__ = ["hetero_sbm"]


def hetero_sbm(
    *,
    num_papers: int = 2000,
    num_authors: int = 1000,
    num_venues: int = 20,
    num_classes: int = 4,
    feature_dim: int = 64,
    authors_per_paper: int = 4,
    p_in: float = 0.9,
    p_venue: float = 0.8,
    labelled_fraction: float = 0.4,
    generator: torch.Generator | None = None,
) -> HGBData:
    """Sample the heterogeneous SBM.

    Args:
        num_papers, num_authors, num_venues: node counts (``num_venues >= num_classes``).
        num_classes: ``C``; feature_dim: width of the paper noise features.
        authors_per_paper: author links drawn per paper (duplicates collapse).
        p_in: probability an author link stays in the paper's class.
        p_venue: probability the venue is of the paper's class.
        labelled_fraction: share of papers in ``train_idx`` (train + validation); the rest is test.
        generator: the only source of randomness.

    Returns:
        An :class:`~batchcraft.data.hgb.HGBData` (``test_file="synthetic"``).
    """
    if num_classes < 2 or num_venues < num_classes or num_authors < num_classes:
        raise ValueError(
            "need num_classes >= 2 and at least one author and one venue per class, got "
            f"C={num_classes}, authors={num_authors}, venues={num_venues}"
        )
    for name, p in (("p_in", p_in), ("p_venue", p_venue), ("labelled_fraction", labelled_fraction)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    g = generator
    y = torch.randint(num_classes, (num_papers,), generator=g)
    author_class = torch.arange(num_authors) % num_classes  # home class of every author
    venue_class = torch.arange(num_venues) % num_classes
    by_class = [torch.nonzero(author_class == c).flatten() for c in range(num_classes)]
    venues_by_class = [torch.nonzero(venue_class == c).flatten() for c in range(num_classes)]
    # paper -> author links
    src = torch.arange(num_papers).repeat_interleave(authors_per_paper)  # [N_p * a]
    stay = torch.rand(src.numel(), generator=g) < p_in
    pick = torch.rand(src.numel(), generator=g)
    any_author = torch.randint(num_authors, (src.numel(),), generator=g)
    in_class = torch.empty_like(any_author)
    for c in range(num_classes):
        m = y[src] == c
        members = by_class[c]
        in_class[m] = members[(pick[m] * members.numel()).long().clamp_max(members.numel() - 1)]
    dst = torch.where(stay, in_class, any_author)
    # paper -> venue links
    stay_v = torch.rand(num_papers, generator=g) < p_venue
    pick_v = torch.rand(num_papers, generator=g)
    any_venue = torch.randint(num_venues, (num_papers,), generator=g)
    own_venue = torch.empty_like(any_venue)
    for c in range(num_classes):
        m = y == c
        vs = venues_by_class[c]
        own_venue[m] = vs[(pick_v[m] * vs.numel()).long().clamp_max(vs.numel() - 1)]
    venue = torch.where(stay_v, own_venue, any_venue)
    x = torch.randn(num_papers, feature_dim, generator=g)  # pure noise: no label information
    graph = HeteroGraph(
        x_dict={"paper": x, "author": None, "venue": None},
        edge_index_dict={
            ("paper", "writes_by", "author"): torch.stack([src, dst]),
            ("paper", "published_in", "venue"): torch.stack([torch.arange(num_papers), venue]),
        },
        num_nodes_dict={"paper": num_papers, "author": num_authors, "venue": num_venues},
    )
    perm = torch.randperm(num_papers, generator=g)
    n_lab = round(labelled_fraction * num_papers)
    train_idx, test_idx = perm[:n_lab].sort().values, perm[n_lab:].sort().values
    return HGBData(
        graph=graph, target="paper", y=y, num_classes=num_classes, multilabel=False,
        train_idx=train_idx, test_idx=test_idx, public_test_idx=test_idx.clone(),
        type_names={0: "paper", 1: "author", 2: "venue"},
        link_names={0: ("paper", "writes_by", "author"), 1: ("paper", "published_in", "venue")},
        test_file="synthetic", name="hetero-sbm",
    )  # fmt: skip
