"""HGB (Heterogeneous Graph Benchmark) node-classification loader, read from a folder or a zip.

Format (one dataset per folder; in a zip the folder is usually named after the dataset):

* ``node.dat``: ``id \\t name \\t type [\\t f1,f2,...]`` (names may be empty or long text; split on
  tabs only). Global ids are contiguous per type; local id = global id - the type's first id.
* ``link.dat``: ``src \\t dst \\t link_type \\t weight`` (CRLF endings occur; weights ignored).
* ``label.dat`` (train + validation), ``label.dat.test`` (public half of the test labels),
  ``label.dat.test_full`` (all test labels): ``id \\t name \\t type \\t label`` where label is an int
  or a comma-separated list (multi-label datasets such as IMDB).
* ``info.dat`` (JSON; type, link and class names) and ``meta.dat`` are optional.

:func:`load_hgb` returns an :class:`HGBData` whose ``test_idx`` comes from ``label.dat.test_full``
by default (``test_labels="full"``; the file used is recorded in ``test_file``);
:func:`hgb_split` draws the standard validation split (stratified 20 %, random for multi-label).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from batchcraft.graph.hetero import EdgeType, HeteroGraph

__all__ = ["HGBData", "hgb_split", "load_hgb"]


@dataclass
class HGBData:
    """One HGB node-classification dataset.

    Attributes:
        graph: the heterogeneous graph (local ids per type).
        target: the labelled node type.
        y: ``[N_τ]`` class ids (-1 where unlabelled) or ``[N_τ, C]`` multi-hot when ``multilabel``.
        num_classes: ``C``; multilabel: whether labels are sets.
        train_idx: rows of ``label.dat`` (train + validation, split with :func:`hgb_split`).
        test_idx: rows of the evaluation file named by ``test_file``.
        public_test_idx: rows of ``label.dat.test`` (the public half), empty when absent.
        type_names: ``{type id: name}``; link_names: ``{link type id: (src, rel, dst)}``.
        test_file: ``"label.dat.test_full"`` or ``"label.dat.test"``.
        name: dataset name (folder name).
        label_agreement: fraction of ``label.dat.test`` rows whose label in
            ``label.dat.test_full`` is the same (``None`` when either file is absent). Values well
            below 1 mean the two files disagree (the shared ACM/DBLP archives agree only at chance
            level, and only ``label.dat.test`` is consistent with ``label.dat``); a warning is
            issued then.
    """

    graph: HeteroGraph
    target: str
    y: Tensor
    num_classes: int
    multilabel: bool
    train_idx: Tensor
    test_idx: Tensor
    public_test_idx: Tensor
    type_names: dict[int, str] = field(default_factory=dict)
    link_names: dict[int, EdgeType] = field(default_factory=dict)
    test_file: str = "label.dat.test_full"
    name: str = ""
    label_agreement: float | None = None


class _Source:
    """Reads member files from a folder or from a zip (dataset folder inside, or at the root)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if self.path.is_file() and zipfile.is_zipfile(self.path):
            self.zip = zipfile.ZipFile(self.path)
            nodes = [n for n in self.zip.namelist() if n.rsplit("/", 1)[-1] == "node.dat"]
            if not nodes:
                raise ValueError(f"{self.path} holds no node.dat: not an HGB archive")
            self.prefix = min(nodes, key=len)[: -len("node.dat")]
            self.name = self.prefix.strip("/").rsplit("/", 1)[-1] or self.path.stem
        elif self.path.is_dir():
            if not (self.path / "node.dat").exists():
                subs = [p for p in self.path.iterdir() if (p / "node.dat").exists()]
                if len(subs) != 1:
                    raise ValueError(f"{self.path} has no node.dat (nor one sub-folder with it)")
                self.path = subs[0]
            self.name = self.path.name
        else:
            raise ValueError(f"{path} is neither an HGB folder nor a zip archive")

    def read(self, member: str) -> str | None:
        if self.zip is not None:
            try:
                raw = self.zip.read(self.prefix + member)
            except KeyError:
                return None
            return raw.decode("utf-8", errors="replace")
        p = self.path / member
        return p.read_text(encoding="utf-8", errors="replace") if p.exists() else None


def _lines(text: str) -> list[list[str]]:
    return [ln.split("\t") for ln in io.StringIO(text).read().splitlines() if ln.strip()]


def _parse_labels(text: str | None) -> list[tuple[int, int, list[int]]]:
    out: list[tuple[int, int, list[int]]] = []
    for parts in _lines(text or ""):
        if len(parts) < 4:
            raise ValueError(f"label line needs 'id, name, type, label' separated by tabs: {parts}")
        labels = [int(v) for v in parts[-1].split(",") if v.strip()]
        out.append((int(parts[0]), int(parts[-2]), labels))
    return out


def load_hgb(path_or_zip: str | Path, *, test_labels: str = "full") -> HGBData:
    """Load an HGB node-classification dataset from a folder or a zip.

    Args:
        path_or_zip: the dataset folder, a folder holding it, or its zip archive.
        test_labels: ``"full"`` (``label.dat.test_full``, default) or ``"public"``
            (``label.dat.test``, the half used by most published numbers).

    Returns:
        An :class:`HGBData`.
    """
    if test_labels not in ("full", "public"):
        raise ValueError(f"test_labels must be 'full' or 'public', got {test_labels!r}")
    src = _Source(path_or_zip)
    info_text = src.read("info.dat")
    info = json.loads(info_text) if info_text else {}
    node_text = src.read("node.dat")
    link_text = src.read("link.dat")
    if node_text is None or link_text is None:
        raise ValueError(f"{path_or_zip} needs node.dat and link.dat")
    # nodes: id, name, type[, features]
    ids: dict[int, list[int]] = {}
    feats: dict[int, list[tuple[int, str]]] = {}
    for parts in _lines(node_text):
        if len(parts) < 3:
            raise ValueError(f"node line needs 'id, name, type' separated by tabs: {parts[:3]}")
        gid, t = int(parts[0]), int(parts[2])
        ids.setdefault(t, []).append(gid)
        if len(parts) >= 4 and parts[3].strip():
            feats.setdefault(t, []).append((gid, parts[3]))
    names_info = info.get("node.dat", {}).get("node type", {})
    type_names = {t: str(names_info.get(str(t), t)) for t in sorted(ids)}
    if len(set(type_names.values())) != len(type_names):
        type_names = {t: f"{n}{t}" for t, n in type_names.items()}
    offsets, counts = {}, {}
    for t, g in ids.items():
        arr = np.sort(np.asarray(g, dtype=np.int64))
        if arr[-1] - arr[0] + 1 != arr.size:
            raise ValueError(f"node ids of type {t} are not contiguous (HGB ids are, per type)")
        offsets[t], counts[t] = int(arr[0]), int(arr.size)
    x_dict: dict[str, Tensor | None] = {}
    for t in sorted(ids):
        rows = feats.get(t)
        if not rows:
            x_dict[type_names[t]] = None
            continue
        if len(rows) != counts[t]:
            raise ValueError(f"type {t}: {len(rows)} of {counts[t]} nodes have features")
        rows.sort()
        mat = np.fromstring(",".join(r for _, r in rows), dtype=np.float32, sep=",")
        if mat.size % counts[t]:
            raise ValueError(f"type {t}: feature rows have different widths")
        x_dict[type_names[t]] = torch.from_numpy(mat.reshape(counts[t], -1))
    # links: src, dst, type, weight
    toks = np.array(link_text.split(), dtype=np.float64)
    if toks.size % 4:
        raise ValueError("link.dat lines must be 'src, dst, link_type, weight' separated by tabs")
    links = toks.reshape(-1, 4)[:, :3].astype(np.int64)
    bounds = sorted((offsets[t], offsets[t] + counts[t], t) for t in offsets)
    starts = np.array([b[0] for b in bounds])

    def type_of(g: np.ndarray) -> np.ndarray:
        return np.array([b[2] for b in bounds])[np.searchsorted(starts, g, side="right") - 1]

    link_info = info.get("link.dat", {}).get("link type", {})
    edge_index_dict: dict[EdgeType, Tensor] = {}
    link_names: dict[int, EdgeType] = {}
    for lt in np.unique(links[:, 2]).tolist():
        sel = links[links[:, 2] == lt]
        ts, td = np.unique(type_of(sel[:, 0])), np.unique(type_of(sel[:, 1]))
        if ts.size != 1 or td.size != 1:
            raise ValueError(f"link type {lt} joins several node types; HGB links join one pair")
        s_t, d_t = int(ts[0]), int(td[0])
        rel = str(link_info.get(str(lt), {}).get("meaning", f"link{lt}"))
        et = (type_names[s_t], rel, type_names[d_t])
        if et in edge_index_dict:
            et = (et[0], f"{rel}_{lt}", et[2])
        ei = np.stack([sel[:, 0] - offsets[s_t], sel[:, 1] - offsets[d_t]])
        edge_index_dict[et] = torch.from_numpy(np.ascontiguousarray(ei))
        link_names[int(lt)] = et
    num_nodes = {type_names[t]: counts[t] for t in ids}
    graph = HeteroGraph(x_dict, edge_index_dict, num_nodes)
    # labels
    train = _parse_labels(src.read("label.dat"))
    public = _parse_labels(src.read("label.dat.test"))
    full_text = src.read("label.dat.test_full")
    if test_labels == "full" and full_text is None:
        raise ValueError(
            "label.dat.test_full is missing; pass test_labels='public' to use label.dat.test"
        )
    full = _parse_labels(full_text)
    test = full if test_labels == "full" else public
    if not train:
        raise ValueError("label.dat is empty or missing: no labelled nodes")
    tgt_types = {t for _, t, _ in train + test + public}
    if len(tgt_types) != 1:
        raise ValueError(f"labels must be on one node type, got types {sorted(tgt_types)}")
    tt = tgt_types.pop()
    target, off, n_t = type_names[tt], offsets[tt], counts[tt]
    all_rows = train + full + public
    multilabel = any(len(lab) != 1 for _, _, lab in all_rows)
    label_names = info.get("label.dat", {}).get("node type", {}).get(str(tt), {})
    num_classes = max(
        max((max(lab) for _, _, lab in all_rows if lab), default=-1) + 1, len(label_names)
    )
    y = torch.zeros(n_t, num_classes) if multilabel else torch.full((n_t,), -1, dtype=torch.long)
    other = public if test_labels == "full" else full
    for gid, _, lab in train + other + test:  # the chosen test file is written last and wins
        if multilabel:
            y[gid - off] = 0.0
            y[gid - off, lab] = 1.0
        else:
            y[gid - off] = lab[0]

    agreement = None
    if public and full:
        full_map = {g: sorted(lab) for g, _, lab in full}
        agreement = sum(full_map.get(g) == sorted(lab) for g, _, lab in public) / len(public)
        if agreement < 0.99:
            warnings.warn(
                f"{src.name}: label.dat.test_full agrees with label.dat.test on only "
                f"{100 * agreement:.1f}% of the public test nodes; the evaluation file matters "
                "(test_labels='public' uses label.dat.test)",
                stacklevel=2,
            )

    def idx(rows: list[tuple[int, int, list[int]]]) -> Tensor:
        return torch.tensor([g - off for g, _, _ in rows], dtype=torch.long)

    return HGBData(
        graph=graph, target=target, y=y, num_classes=num_classes, multilabel=multilabel,
        train_idx=idx(train), test_idx=idx(test), public_test_idx=idx(public),
        type_names=type_names, link_names=link_names, name=src.name,
        test_file="label.dat.test_full" if test_labels == "full" else "label.dat.test",
        label_agreement=agreement,
    )  # fmt: skip


def hgb_split(
    train_idx: Tensor,
    y: Tensor,
    *,
    val_ratio: float = 0.2,
    multilabel: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The standard HGB train/validation split of ``label.dat``.

    Args:
        train_idx: ``[N_l]`` labelled rows; y: ``[N]`` ids or ``[N, C]`` multi-hot.
        val_ratio: fraction held out for validation.
        multilabel: random split (no strata) when True, else stratified per class.

    Returns:
        ``(train, val)`` sorted row ids.
    """
    if not 0.0 < val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in (0, 1), got {val_ratio}")
    if multilabel:
        perm = train_idx[torch.randperm(train_idx.numel(), generator=generator)]
        n_val = round(val_ratio * train_idx.numel())
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    tr, va = [], []
    labels = y[train_idx]
    for c in torch.unique(labels).tolist():
        members = train_idx[labels == c]
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_val = round(val_ratio * members.numel())
        va.append(members[:n_val])
        tr.append(members[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values
