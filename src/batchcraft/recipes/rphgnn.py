"""Recipe: RpHGNN and its baselines end to end: presets (the official hyper-parameters),
pre-compute, the training loop with early stopping, and the per-seed run (``batchcraft graph
rphgnn``).

``fit_node_classifier(data, method="rphgnn", config=PRESETS["ACM"], seed=0)`` pre-computes the
groups, splits ``label.dat`` (stratified 20 % validation), trains with early stopping and returns
test micro/macro-F1 at the best validation epoch with timings. Methods: ``"rphgnn"``,
``"relation_wise"`` (SeHGNN-style metapath tables, per-path projection + concatenation),
``"sehgnn"`` (the same tables with SeHGNN's transformer-style semantic fusion, :mod:`.sehgnn`),
``"nars"`` (NARS/SIGN-style) and ``"mlp"`` (target features).

The seed decides everything: the pre-computation's random projections, the validation split and
the batch order come from explicit generators derived from it, and the model's starting weights
and dropout from the global RNG seeded with it inside :func:`~batchcraft.recipes.seeding.seeded`
(the caller's RNG is left alone). A run is one seed; the CLI writes every finished seed to its
results file atomically and skips the seeds already there, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from batchcraft.data.hetero_sbm import hetero_sbm
from batchcraft.data.hgb import HGBData, hgb_split, load_hgb
from batchcraft.graph.rphgnn import rphgnn_precompute
from batchcraft.graph.rphgnn_baselines import (
    feature_groups,
    nars_precompute,
    relation_wise_precompute,
)
from batchcraft.graph.rphgnn_model import RpHGNN, f1_scores
from batchcraft.graph.sehgnn import SeHGNN
from batchcraft.recipes.seeding import seeded

__all__ = [
    "METHODS",
    "PRESETS",
    "RpHGNNConfig",
    "RpHGNNTrainSettings",
    "build_model",
    "fit_node_classifier",
    "load_dataset",
    "precompute_groups",
    "train_node_classifier",
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


@dataclass(kw_only=True, frozen=True)
class RpHGNNTrainSettings:
    """Training hyper-parameters of :func:`train_node_classifier` (the paper's defaults);
    validated on construction.

    Early stopping (as the official code): after each validation without improvement
    ``since += val_every``; training stops once ``since > patience``.
    """

    lr: float = 3e-3  # Adam, no weight decay
    epochs: int = 500
    patience: int = 100  # epochs without improvement tolerated (stop when exceeded)
    batch_size: int = 1000
    val_every: int = 1
    stop_on: str = "f1"  # "f1" (mean of val micro/macro) or "loss"
    eval_batch_size: int = 10000

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr!r}")
        for name in ("epochs", "batch_size", "val_every", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, int)
            or self.patience < 0
        ):
            raise ValueError(f"patience must be an int >= 0, got {self.patience!r}")
        if self.stop_on not in ("f1", "loss"):
            raise ValueError(f"stop_on must be 'f1' or 'loss', got {self.stop_on!r}")


def _predict(logits: Tensor, multilabel: bool) -> Tensor:
    return (logits > 0).long() if multilabel else logits.argmax(1)


def _gather(groups: Mapping[str, Any], idx: Tensor, device: torch.device) -> dict[str, Tensor]:
    """Rows ``idx`` of every group as fp32 on ``device``; a group may be a tensor or any table
    with ``gather(idx)`` (e.g. :class:`~batchcraft.graph.feature_store.PinnedFeatureStore`)."""
    out = {}
    for j, g in groups.items():
        rows = g[idx] if isinstance(g, Tensor) else g.gather(idx)
        out[j] = rows.to(device=device, dtype=torch.float32)
    return out


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    groups: Mapping[str, Any],
    y: Tensor,
    idx: Tensor,
    multilabel: bool,
    bs: int,
    device: torch.device,
) -> tuple[float, float, float]:
    model.eval()
    logits = torch.cat(
        [model(_gather(groups, idx[a : a + bs], device)) for a in range(0, idx.numel(), bs)]
    )
    tgt = y[idx].to(device)
    loss = _loss(logits, tgt, multilabel)
    micro, macro = f1_scores(_predict(logits, multilabel).cpu(), tgt.cpu(), multilabel=multilabel)
    return float(loss), micro, macro


def _loss(logits: Tensor, target: Tensor, multilabel: bool) -> Tensor:
    if multilabel:
        return nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    return nn.functional.cross_entropy(logits, target)


def train_node_classifier(
    model: nn.Module,
    groups: Mapping[str, Any],
    y: Tensor,
    train_idx: Tensor,
    val_idx: Tensor,
    test_idx: Tensor,
    *,
    config: RpHGNNTrainSettings,
    generator: torch.Generator,
    multilabel: bool = False,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Mini-batch training with early stopping; test metrics are those at the best validation epoch.

    Dropout draws from the global RNG: run it inside :func:`~batchcraft.recipes.seeding.seeded`
    (as :func:`fit_node_classifier` does) for a run decided by the seed alone.

    Args:
        model: maps ``{key: [B, n_j, m_j]}`` to logits ``[B, C]``.
        groups: the pre-computed tables ``{key: [N_τ, n_j, m_j]}`` (any dtype, any device), or
            row-gatherable stores of them (``gather(idx)``, e.g. ``PinnedFeatureStore``).
        y: ``[N_τ]`` class ids or ``[N_τ, C]`` multi-hot; *_idx: row ids into the tables.
        config: :class:`RpHGNNTrainSettings`; generator: drives batch shuffling.
        on_epoch: called with ``(epoch, metrics)`` after each validation.

    Returns:
        ``{"best_epoch", "val_micro", "val_macro", "test_micro", "test_macro", "epochs_run",
        "epoch_time_s", "time_to_best_s", "train_time_s"}``.
    """
    if config.stop_on not in ("f1", "loss"):
        raise ValueError(f"stop_on must be 'f1' or 'loss', got {config.stop_on!r}")
    dev = torch.device(device)
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    best_score = -math.inf
    best: dict[str, Any] = {}
    best_state: dict[str, Tensor] = {}
    t0 = time.perf_counter()
    since, epoch = 0, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = train_idx[torch.randperm(train_idx.numel(), generator=generator)]
        for a in range(0, perm.numel(), config.batch_size):
            idx = perm[a : a + config.batch_size]
            loss = _loss(model(_gather(groups, idx, dev)), y[idx].to(dev), multilabel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch % config.val_every and epoch != config.epochs:
            continue
        vl, vmi, vma = _evaluate(model, groups, y, val_idx, multilabel, config.eval_batch_size, dev)
        score = -vl if config.stop_on == "loss" else 0.5 * (vmi + vma)
        if on_epoch is not None:
            on_epoch(epoch, {"val_loss": vl, "val_micro": vmi, "val_macro": vma})
        if score > best_score:
            best_score, since = score, 0
            best = {"best_epoch": epoch, "val_loss": vl, "val_micro": vmi, "val_macro": vma}
            best["time_to_best_s"] = time.perf_counter() - t0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since += config.val_every
            if since > config.patience:  # the official rule (not >=)
                break
    train_time = time.perf_counter() - t0
    model.load_state_dict(best_state)
    _, tmi, tma = _evaluate(model, groups, y, test_idx, multilabel, config.eval_batch_size, dev)
    return {
        **best,
        "test_micro": tmi,
        "test_macro": tma,
        "epochs_run": epoch,
        "train_time_s": train_time,
        "epoch_time_s": train_time / max(epoch, 1),
    }


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

    Model initialisation and dropout use the global RNG inside
    :func:`~batchcraft.recipes.seeding.seeded` ``(seed)`` (the caller's RNG is restored
    afterwards); pre-computation, split and batches use explicit generators derived from ``seed``.

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
    with seeded(seed):
        model = build_model(method, shapes, data.num_classes, cfg)
        tc = RpHGNNTrainSettings(
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
