"""End-to-end RpHGNN runs: presets (the official hyper-parameters), pre-compute + train for RpHGNN
and its baselines.

``fit_node_classifier(data, method="rphgnn", config=PRESETS["ACM"], seed=0)`` pre-computes the
groups, splits ``label.dat`` (stratified 20 % validation), trains with early stopping and returns
test micro/macro-F1 at the best validation epoch with timings. Methods: ``"rphgnn"``,
``"relation_wise"`` (SeHGNN-style metapath tables, per-path projection + concatenation),
``"sehgnn"`` (the same tables with SeHGNN's transformer-style semantic fusion, :mod:`.sehgnn`),
``"nars"`` (NARS/SIGN-style) and ``"mlp"`` (target features).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchcraft.data.hetero_sbm import hetero_sbm
from batchcraft.data.hgb import HGBData, hgb_split, load_hgb
from batchcraft.graph.rphgnn import rphgnn_precompute
from batchcraft.graph.rphgnn_baselines import (
    feature_groups,
    nars_precompute,
    relation_wise_precompute,
)
from batchcraft.graph.rphgnn_model import RpHGNN, TrainConfig, train_node_classifier
from batchcraft.graph.sehgnn import SeHGNN

__all__ = [
    "METHODS",
    "PRESETS",
    "RpHGNNConfig",
    "build_model",
    "fit_node_classifier",
    "load_dataset",
    "precompute_groups",
]

METHODS = ("rphgnn", "relation_wise", "sehgnn", "nars", "mlp")


@dataclass(kw_only=True, frozen=True)
class RpHGNNConfig:
    """Pre-computation, model and training hyper-parameters (defaults: the official ACM run).

    Validated once on construction (``ValueError`` naming the bad field); derive variants with
    ``dataclasses.replace``.
    """

    num_iterations: int = 6  # K
    use_input: bool = True
    use_all_features: bool = True
    input_dropout: float = 0.8
    dropout: float = 0.7
    hidden: int = 64
    embedding_size: int = 256  # e, width of random features of featureless types
    epochs: int = 500
    patience: int = 100
    batch_size: int = 1000
    merge: str = "mean"
    val_every: int = 1
    stop_on: str = "f1"  # DBLP: "loss"
    num_group_layers: int = 2
    num_output_layers: int = 2
    num_filters: int = 2
    lr: float = 3e-3
    kernel: str = "sparse"
    even_odd: str = "all"
    baseline_hops: int = 2  # metapath length / NARS hops for the baselines

    def __post_init__(self) -> None:
        for name in (
            "num_iterations", "hidden", "embedding_size", "epochs", "batch_size", "val_every",
            "num_group_layers", "num_output_layers", "num_filters", "baseline_hops",
        ):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                label = "num_iterations (K)" if name == "num_iterations" else name
                raise ValueError(f"{label} must be an int >= 1, got {v!r}")
        if (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 0
        ):
            raise ValueError(f"patience must be an int >= 0, got {self.patience!r}")
        for name in ("input_dropout", "dropout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1), got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        choices = {
            "merge": ("concat", "mean"),
            "stop_on": ("f1", "loss"),
            "kernel": ("sparse", "gaussian", "gaussian_no_norm"),
            "even_odd": ("all", "odd", "even"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


# baseline_hops follows SeHGNN's published runs (ACM: metapaths of up to 4 hops; DBLP: 2)
PRESETS: dict[str, RpHGNNConfig] = {
    "ACM": RpHGNNConfig(baseline_hops=4),
    "DBLP": RpHGNNConfig(
        num_iterations=5, use_input=False, input_dropout=0.8, dropout=0.8, hidden=512,
        embedding_size=1024, patience=30, batch_size=10000, merge="concat", val_every=10,
        stop_on="loss",
    ),
    "IMDB": RpHGNNConfig(
        num_iterations=3, dropout=0.7, hidden=256, embedding_size=1024, patience=50,
        batch_size=10000, merge="concat",
    ),
    "hetero-sbm": RpHGNNConfig(
        num_iterations=3, input_dropout=0.0, dropout=0.3, hidden=64, embedding_size=64,
        epochs=200, patience=30, batch_size=256, merge="concat",
    ),
}  # fmt: skip


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_labels: str = "auto",
) -> HGBData:
    """``"sbm"`` (the seeded hetero SBM), an HGB folder / zip path, or a dataset name.

    A name (``"ACM"``) is looked up as ``<folder>/<name>.zip`` or ``<folder>/<name>/`` in
    ``data_dir`` when given (only there), else in every folder of
    :func:`~batchcraft.data.paths.data_dir_candidates` (``$BATCHCRAFT_DATA``, then
    ``../shared/data``).

    Raises:
        FileNotFoundError: naming every path tried, when the dataset is not found.
    """
    if spec.lower() in ("sbm", "hetero-sbm"):
        return hetero_sbm(generator=torch.Generator().manual_seed(seed))
    path = Path(spec)
    if path.exists():
        return load_hgb(path, test_labels=test_labels)
    if len(path.parts) > 1 or path.suffix:  # a path, not a name
        raise FileNotFoundError(f"HGB dataset {spec!r} not found: no such file or folder")
    from batchcraft.data.paths import data_dir_candidates, find_data_dir

    if data_dir is not None:
        folders = [find_data_dir(data_dir)]  # raises when the folder itself is missing
    else:
        folders = list(dict.fromkeys(data_dir_candidates()))
    tried = []
    for folder in folders:
        assert folder is not None
        for cand in (Path(folder) / f"{spec}.zip", Path(folder) / spec):
            if cand.exists():
                return load_hgb(cand, test_labels=test_labels)
            tried.append(str(cand))
    raise FileNotFoundError(
        f"dataset {spec!r} not found; tried {', '.join(tried)}. Pass 'sbm', an HGB folder/zip "
        "path, or --data-dir / $BATCHCRAFT_DATA pointing at a folder holding "
        f"{spec}.zip"
    )


def precompute_groups(
    data: HGBData,
    method: str,
    config: RpHGNNConfig,
    *,
    generator: torch.Generator,
    progress: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The pre-computed groups ``{key: [N_τ, n_j, m_j]}`` of ``method`` on ``data``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    g = data.graph
    if method == "rphgnn":
        return rphgnn_precompute(
            g.x_dict, g.edge_index_dict, g.num_nodes_dict, data.target,
            num_iterations=config.num_iterations, embedding_size=config.embedding_size,
            use_input=config.use_input, use_all_features=config.use_all_features,
            even_odd=config.even_odd, kernel=config.kernel, generator=generator,
            progress=progress,
        )  # fmt: skip
    if method in ("relation_wise", "sehgnn"):
        return relation_wise_precompute(
            g.x_dict, g.edge_index_dict, g.num_nodes_dict, data.target,
            num_hops=config.baseline_hops, embedding_size=config.embedding_size,
            use_all_features=config.use_all_features, generator=generator,
        )  # fmt: skip
    if method == "nars":
        return nars_precompute(
            g.x_dict, g.edge_index_dict, g.num_nodes_dict, data.target,
            num_hops=config.baseline_hops, embedding_size=config.embedding_size,
            generator=generator,
        )  # fmt: skip
    if method == "mlp":
        x = g.x_dict.get(data.target)
        if x is None:
            raise ValueError(f"the MLP baseline needs features on the target type {data.target!r}")
        return feature_groups(x)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def build_model(
    method: str, shapes: dict[str, tuple[int, int]], num_classes: int, cfg: RpHGNNConfig
) -> nn.Module:
    """The encoder of ``method`` for groups of ``shapes``: :class:`SeHGNN` for ``"sehgnn"``,
    else :class:`RpHGNN` (depth-1 groups make it a per-path projection + merge + MLP)."""
    if method == "sehgnn":
        return SeHGNN(
            shapes, cfg.hidden, num_classes, num_group_layers=cfg.num_group_layers,
            num_output_layers=cfg.num_output_layers, input_dropout=cfg.input_dropout,
            dropout=cfg.dropout,
        )  # fmt: skip
    return RpHGNN(
        shapes, cfg.hidden, num_classes, num_group_layers=cfg.num_group_layers,
        num_output_layers=cfg.num_output_layers, num_filters=cfg.num_filters,
        input_dropout=cfg.input_dropout, dropout=cfg.dropout, merge=cfg.merge,
    )  # fmt: skip


def fit_node_classifier(
    data: HGBData,
    *,
    method: str = "rphgnn",
    config: RpHGNNConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    groups: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[str], None] | None = None,
    feature_store: bool = False,
    precompute_s: float | None = None,
) -> dict[str, Any]:
    """Pre-compute (unless ``groups`` is given), split, train, evaluate on ``data.test_idx``.

    ``precompute_s``: seconds the caller spent computing the ``groups`` it passes (recorded as
    ``precompute_s`` and added to ``total_s``); ``None`` with given groups records 0 (e.g. groups
    loaded from a cache).

    Model initialisation and dropout use the global RNG inside ``torch.random.fork_rng`` seeded
    with ``seed`` (restored afterwards); pre-computation, split and batches use explicit
    generators derived from ``seed``.

    With ``feature_store=True`` every group is served to the mini-batches through a
    :class:`~batchcraft.graph.feature_store.PinnedFeatureStore` (pinned host table, UVA/staged
    gather to ``device`` on CUDA; a plain gather on CPU).

    Returns:
        The training record of :func:`train_node_classifier` plus ``precompute_s``,
        ``stored_bytes``, ``num_groups``, ``total_s``, ``method``, ``seed``, ``test_file``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg = config or PRESETS.get(data.name, RpHGNNConfig())
    t0 = time.perf_counter()
    outside = 0.0
    if groups is None:
        groups = precompute_groups(
            data, method, cfg, generator=torch.Generator().manual_seed(seed), progress=progress
        )
    elif precompute_s is not None:
        outside = float(precompute_s)
    pre_s = time.perf_counter() - t0 + outside
    tr, va = hgb_split(
        data.train_idx, data.y, multilabel=data.multilabel,
        generator=torch.Generator().manual_seed(10_000 + seed),
    )  # fmt: skip
    shapes = {j: (int(t.shape[1]), int(t.shape[2])) for j, t in groups.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, shapes, data.num_classes, cfg)
        tc = TrainConfig(
            lr=cfg.lr, epochs=cfg.epochs, patience=cfg.patience, batch_size=cfg.batch_size,
            val_every=cfg.val_every, stop_on=cfg.stop_on,
        )  # fmt: skip
        served: dict[str, Any] = dict(groups)
        if feature_store:
            from batchcraft.graph.feature_store import PinnedFeatureStore

            served = {
                j: PinnedFeatureStore(t.contiguous(), device=device) for j, t in groups.items()
            }
        try:
            rec = train_node_classifier(
                model, served, data.y, tr, va, data.test_idx, config=tc,
                generator=torch.Generator().manual_seed(20_000 + seed), multilabel=data.multilabel,
                device=device, on_epoch=on_epoch,
            )  # fmt: skip
        finally:
            for st in served.values():
                if not isinstance(st, torch.Tensor):
                    st.close()
    rec.update(
        method=method, seed=seed, precompute_s=pre_s, total_s=time.perf_counter() - t0 + outside,
        stored_bytes=sum(t.numel() * t.element_size() for t in groups.values()),
        num_groups=len(groups), test_file=data.test_file, config=dataclasses.asdict(cfg),
    )  # fmt: skip
    return rec
