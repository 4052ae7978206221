"""HGB (Heterogeneous Graph Benchmark) node-classification loader, read from a folder or a zip.

Format (one dataset per folder; in a zip the folder is usually named after the dataset):

* ``node.dat``: ``id \\t name \\t type [\\t f1,f2,...]`` (names may be empty or long text; split on
  tabs only). Global ids are contiguous per type; local id = global id - the type's first id.
* ``link.dat``: ``src \\t dst \\t link_type \\t weight`` (CRLF endings occur; weights ignored).
* ``label.dat`` (train + validation), ``label.dat.test`` (public half of the test labels),
  ``label.dat.test_full`` (all test labels): ``id \\t name \\t type \\t label`` where label is an int
  or a comma-separated list (multi-label datasets such as IMDB).
* ``info.dat`` (JSON; type, link and class names) and ``meta.dat`` are optional.

Test labels. ``label.dat.test_full`` should repeat ``label.dat.test`` on the public half, but in
some distributed archives it does not (the shared ACM / DBLP zips agree on about a third of the
public nodes: chance level). ``load_hgb(..., test_labels="auto")`` (the default) therefore uses
``label.dat.test_full`` only when the two files agree (>= 99 % of the public nodes); when they
disagree it picks the file that agrees with ``label.dat`` through the graph (a 2-hop label vote,
see :func:`label_vote`) and raises a clear error when that check cannot tell them apart. The file
used and the reason are recorded in :attr:`HGBData.test_file` / :attr:`HGBData.test_file_reason`
and logged. Malformed lines raise ``ValueError`` naming the file and line number.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from batchcraft.data.archive import MAX_MEMBER_BYTES, read_file, read_member
from batchcraft.data.hetero_graph import EdgeType, HeteroGraph

__all__ = ["AGREEMENT_THRESHOLD", "HGBData", "hgb_split", "label_vote", "load_hgb"]

log = logging.getLogger(__name__)

AGREEMENT_THRESHOLD = 0.99  # below this the two test files "disagree"
_VOTE_MARGIN = 0.10  # the label vote must prefer one file by at least this much
TEST_LABELS = ("auto", "full", "public")
_FULL, _PUBLIC = "label.dat.test_full", "label.dat.test"

_LabelRows = list[tuple[int, list[int]]]  # (global id, labels)


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
        test_file: the evaluation file, ``"label.dat.test_full"`` or ``"label.dat.test"``
            (``"synthetic"`` for generated data).
        name: dataset name (folder name).
        label_agreement: fraction of ``label.dat.test`` rows whose label in
            ``label.dat.test_full`` is the same (``None`` when either file is absent).
        test_file_reason: one sentence saying why ``test_file`` was used.
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
    test_file: str = _FULL
    name: str = ""
    label_agreement: float | None = None
    test_file_reason: str = ""


class _Source:
    """Reads member files from a folder or from a zip (dataset folder inside, or at the root)."""

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if not self.path.exists():
            raise FileNotFoundError(f"HGB dataset {str(self.path)!r} does not exist")
        if self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise ValueError(
                    f"{self.path} is a file but not a zip archive; pass an HGB zip or folder"
                )
            self.zip = zipfile.ZipFile(self.path)
            nodes = [n for n in self.zip.namelist() if n.rsplit("/", 1)[-1] == "node.dat"]
            if not nodes:
                raise ValueError(f"{self.path} holds no node.dat: not an HGB archive")
            self.prefix = min(nodes, key=len)[: -len("node.dat")]
            self.name = self.prefix.strip("/").rsplit("/", 1)[-1] or self.path.stem
        else:
            if not (self.path / "node.dat").exists():
                subs = [p for p in self.path.iterdir() if (p / "node.dat").exists()]
                if len(subs) != 1:
                    raise ValueError(
                        f"{self.path} has no node.dat (nor exactly one sub-folder with it): "
                        "not an HGB folder"
                    )
                self.path = subs[0]
            self.name = self.path.name

    def where(self, member: str) -> str:
        """The member's location for error messages (``archive.zip:ACM/node.dat`` or a path)."""
        return (
            f"{self.path}:{self.prefix}{member}"
            if self.zip is not None
            else str(self.path / member)
        )

    def read(self, member: str) -> str | None:
        if self.zip is not None:
            try:
                raw = read_member(self.zip, self.prefix + member, max_bytes=self.max_bytes)
            except KeyError:
                return None
        else:
            p = self.path / member
            if not p.exists():
                return None
            raw = read_file(p, max_bytes=self.max_bytes)
        return raw.decode("utf-8", errors="replace")


def _records(text: str, where: str, fields: str, lo: int, hi: int) -> list[tuple[int, list[str]]]:
    """Non-empty lines as ``(line number, tab-separated parts)``, each with ``lo..hi`` parts."""
    out = []
    for lineno, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        parts = ln.split("\t")
        if not lo <= len(parts) <= hi:
            raise ValueError(
                f"{where}, line {lineno}: expected {fields} separated by tabs, got {len(parts)} "
                f"field(s): {ln[:80]!r}"
            )
        out.append((lineno, parts))
    return out


def _int(value: str, where: str, lineno: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{where}, line {lineno}: {what} must be an integer, got {value.strip()[:40]!r}"
        ) from None


def _parse_labels(text: str | None, where: str) -> list[tuple[int, int, list[int], int]]:
    """``(global id, type, labels, line number)`` per line of a label file."""
    out = []
    for lineno, parts in _records(text or "", where, "'id, name, type, label'", 4, 4):
        labels = [_int(v, where, lineno, "a label") for v in parts[3].split(",") if v.strip()]
        if any(v < 0 for v in labels):
            raise ValueError(f"{where}, line {lineno}: labels must be >= 0, got {parts[3]!r}")
        gid = _int(parts[0], where, lineno, "the node id")
        out.append((gid, _int(parts[2], where, lineno, "the node type"), labels, lineno))
    return out


def _parse_features(rows: list[tuple[int, int, str]], where: str) -> np.ndarray:
    """``[n, F]`` float32 from comma-separated rows ``(gid, line number, text)`` sorted by gid."""
    width = rows[0][2].count(",") + 1
    for _, lineno, text in rows:
        if text.count(",") + 1 != width:
            raise ValueError(
                f"{where}, line {lineno}: {text.count(',') + 1} features, but line "
                f"{rows[0][1]} has {width}; every node of a type needs the same feature width"
            )
    try:
        mat = np.fromstring(",".join(r for _, _, r in rows), dtype=np.float32, sep=",")
    except ValueError:
        mat = np.empty(0, dtype=np.float32)
    if mat.size != len(rows) * width:  # locate the bad value (slow path, errors only)
        for _, lineno, text in rows:
            for v in text.split(","):
                try:
                    float(v)
                except ValueError:
                    raise ValueError(
                        f"{where}, line {lineno}: feature {v.strip()[:40]!r} is not a number"
                    ) from None
        raise ValueError(f"{where}: could not parse the feature columns")
    return mat.reshape(len(rows), width)


def _parse_links(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``([E, 3] int64 (src, dst, link_type), [E] line numbers)`` from link.dat (weights dropped)."""
    linenos = []
    lines = text.splitlines()
    for lineno, ln in enumerate(lines, 1):
        n = len(ln.split())
        if n == 0:
            continue
        if n != 4:
            raise ValueError(
                f"{where}, line {lineno}: expected 'src, dst, link_type, weight' separated by "
                f"tabs, got {n} field(s): {ln[:80]!r}"
            )
        linenos.append(lineno)
    try:
        toks = np.fromstring(text, dtype=np.float64, sep=" ")
    except ValueError:
        toks = np.empty(0)
    if toks.size != 4 * len(linenos):
        for lineno in linenos:
            for v in lines[lineno - 1].split():
                try:
                    float(v)
                except ValueError:
                    raise ValueError(
                        f"{where}, line {lineno}: {v[:40]!r} is not a number"
                    ) from None
        raise ValueError(f"{where}: could not parse the link columns")
    arr = toks.reshape(-1, 4)[:, :3]
    bad = np.nonzero((arr != np.floor(arr)).any(1) | ~np.isfinite(arr).all(1))[0]
    if bad.size:
        lineno = linenos[int(bad[0])]
        raise ValueError(
            f"{where}, line {lineno}: src, dst and link_type must be integers: "
            f"{lines[lineno - 1][:80]!r}"
        )
    return arr.astype(np.int64), np.asarray(linenos)


def label_vote(graph: HeteroGraph, target: str, y_onehot: Tensor) -> Tensor:
    """Scores ``[N_τ, C]`` of a 2-hop label vote: the known labels ``y_onehot`` spread along every
    relation incident to ``target`` (mean to the other end, mean back; same-type relations: one
    mean hop, both directions).

    An independent consistency check of test labels against ``label.dat`` (homophilous relations
    such as paper-author-paper carry the label); rows with no labelled 2-hop neighbour are zero.

    Args:
        graph: the heterogeneous graph; target: the labelled type.
        y_onehot: ``[N_τ, C]`` one-hot (or multi-hot) rows of the known labels, zero elsewhere.
    """

    def mean_into(src: Tensor, dst: Tensor, x: Tensor, n_dst: int) -> Tensor:
        out = torch.zeros(n_dst, x.shape[1], dtype=x.dtype)
        out.index_add_(0, dst, x[src])
        deg = torch.bincount(dst, minlength=n_dst).clamp_min(1).to(x.dtype)
        return out / deg[:, None]

    n = graph.num_nodes_dict[target]
    votes = torch.zeros_like(y_onehot)
    for (s, _, d), ei in graph.edge_index_dict.items():
        src, dst = ei[0].long(), ei[1].long()
        if s == d == target:
            votes += mean_into(src, dst, y_onehot, n) + mean_into(dst, src, y_onehot, n)
        elif s == target:
            mid = mean_into(src, dst, y_onehot, graph.num_nodes_dict[d])
            votes += mean_into(dst, src, mid, n)
        elif d == target:
            mid = mean_into(dst, src, y_onehot, graph.num_nodes_dict[s])
            votes += mean_into(src, dst, mid, n)
    return votes


def _vote_agreement(votes: Tensor, rows: _LabelRows, off: int) -> tuple[float, int]:
    """Fraction of ``rows`` whose label set holds the vote's top class, over voted rows."""
    hits = voted = 0
    for gid, lab in rows:
        v = votes[gid - off]
        if float(v.max()) <= 0.0:
            continue
        voted += 1
        hits += int(int(v.argmax()) in lab)
    return (hits / voted if voted else math.nan), voted


def _choose_test_file(
    requested: str,
    public: _LabelRows,
    full: _LabelRows,
    have_public: bool,
    have_full: bool,
    name: str,
    votes_fn: Callable[[], Tensor],
    off: int,
) -> tuple[str, float | None, str]:
    """``(file, agreement, reason)`` for ``test_labels=requested`` (see the module docstring)."""
    agreement = None
    if public and full:
        full_map = {g: sorted(lab) for g, lab in full}
        agreement = sum(full_map.get(g) == sorted(lab) for g, lab in public) / len(public)
    if requested == "public":
        if not have_public:
            raise ValueError(f"{name}: {_PUBLIC} is missing; use test_labels='full' or 'auto'")
        return _PUBLIC, agreement, f"{_PUBLIC} requested"
    if requested == "full":
        if not have_full:
            raise ValueError(f"{name}: {_FULL} is missing; use test_labels='public' or 'auto'")
        if agreement is not None and agreement < AGREEMENT_THRESHOLD:
            warnings.warn(
                f"{name}: {_FULL} was requested but agrees with {_PUBLIC} on only "
                f"{100 * agreement:.1f}% of the public test nodes; test_labels='auto' picks the "
                "file consistent with label.dat",
                UserWarning,
                stacklevel=3,
            )
        return _FULL, agreement, f"{_FULL} requested"
    if not have_full and not have_public:
        raise ValueError(f"{name}: neither {_FULL} nor {_PUBLIC} exists: no test labels")
    if not have_public:
        return _FULL, None, f"only {_FULL} exists"
    if not have_full:
        return _PUBLIC, None, f"only {_PUBLIC} exists"
    if agreement is None or agreement >= AGREEMENT_THRESHOLD:
        pct = "" if agreement is None else f" on {100 * agreement:.1f}% of the public nodes"
        return _FULL, agreement, f"{_FULL} and {_PUBLIC} agree{pct}; using the full set"
    # the files disagree: which one agrees with label.dat through the graph?
    votes = votes_fn()
    public_ids = {g for g, _ in public}
    full_on_public = [(g, lab) for g, lab in full if g in public_ids]
    a_pub, voted = _vote_agreement(votes, public, off)
    a_full, _ = _vote_agreement(votes, full_on_public, off)
    summary = (
        f"{name}: {_FULL} agrees with {_PUBLIC} on only {100 * agreement:.1f}% of the "
        f"{len(public)} public test nodes; a 2-hop label vote from label.dat agrees with "
        f"{_PUBLIC} on {100 * a_pub:.1f}% and with {_FULL} on {100 * a_full:.1f}% of the "
        f"{voted} voted nodes"
    )
    if voted and not math.isnan(a_pub) and a_pub >= a_full + _VOTE_MARGIN:
        return _PUBLIC, agreement, summary + f": using {_PUBLIC}"
    if voted and not math.isnan(a_full) and a_full >= a_pub + _VOTE_MARGIN:
        return _FULL, agreement, summary + f": using {_FULL}"
    raise ValueError(
        summary + "; cannot tell which file is consistent: pass test_labels='public' or 'full' "
        "explicitly"
    )


def load_hgb(
    path_or_zip: str | Path,
    *,
    test_labels: str = "auto",
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> HGBData:
    """Load an HGB node-classification dataset from a folder or a zip.

    Args:
        path_or_zip: the dataset folder, a folder holding it, or its zip archive.
        test_labels: ``"auto"`` (default: ``label.dat.test_full`` when it agrees with
            ``label.dat.test``, else the file consistent with ``label.dat``, else an error),
            ``"full"`` (``label.dat.test_full``; warns when the files disagree) or ``"public"``
            (``label.dat.test``, the half used by most published numbers).
        max_member_bytes: cap on the size of any one file read into memory.

    Returns:
        An :class:`HGBData`; ``test_file`` / ``test_file_reason`` say which file was used and why.

    Raises:
        FileNotFoundError: when ``path_or_zip`` does not exist.
        ValueError: for malformed files (with file and line number), or test files that disagree
            without a way to tell which one is right (``"auto"``).
    """
    if test_labels not in TEST_LABELS:
        raise ValueError(f"test_labels must be one of {TEST_LABELS}, got {test_labels!r}")
    src = _Source(path_or_zip, max_member_bytes)
    info_text = src.read("info.dat")
    try:
        info = json.loads(info_text) if info_text else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src.where('info.dat')} is not valid JSON: {exc}") from None
    node_text = src.read("node.dat")
    link_text = src.read("link.dat")
    if node_text is None or link_text is None:
        missing = [m for m, t in (("node.dat", node_text), ("link.dat", link_text)) if t is None]
        raise ValueError(f"{src.path} needs node.dat and link.dat; missing: {', '.join(missing)}")
    # nodes: id, name, type[, features]
    where = src.where("node.dat")
    ids: dict[int, list[int]] = {}
    feats: dict[int, list[tuple[int, int, str]]] = {}
    for lineno, parts in _records(node_text, where, "'id, name, type[, features]'", 3, 4):
        gid = _int(parts[0], where, lineno, "the node id")
        t = _int(parts[2], where, lineno, "the node type")
        ids.setdefault(t, []).append(gid)
        if len(parts) == 4 and parts[3].strip():
            feats.setdefault(t, []).append((gid, lineno, parts[3]))
    if not ids:
        raise ValueError(f"{where} lists no nodes")
    names_info = info.get("node.dat", {}).get("node type", {})
    type_names = {t: str(names_info.get(str(t), t)) for t in sorted(ids)}
    if len(set(type_names.values())) != len(type_names):
        type_names = {t: f"{n}{t}" for t, n in type_names.items()}
    offsets, counts = {}, {}
    for t, g in ids.items():
        arr = np.sort(np.asarray(g, dtype=np.int64))
        if arr[-1] - arr[0] + 1 != arr.size:
            raise ValueError(
                f"{where}: node ids of type {t} are not contiguous (or repeat); HGB ids are "
                "contiguous per type"
            )
        offsets[t], counts[t] = int(arr[0]), int(arr.size)
    x_dict: dict[str, Tensor | None] = {}
    for t in sorted(ids):
        rows = feats.get(t)
        if not rows:
            x_dict[type_names[t]] = None
            continue
        if len(rows) != counts[t]:
            raise ValueError(f"{where}: type {t}: {len(rows)} of {counts[t]} nodes have features")
        rows.sort()
        x_dict[type_names[t]] = torch.from_numpy(_parse_features(rows, where))
    # links: src, dst, type, weight
    lwhere = src.where("link.dat")
    links, link_lines = _parse_links(link_text, lwhere)
    bounds = sorted((offsets[t], offsets[t] + counts[t], t) for t in offsets)
    starts = np.array([b[0] for b in bounds])
    ends = np.array([b[1] for b in bounds])
    tids = np.array([b[2] for b in bounds])
    for col in (0, 1):
        pos = np.searchsorted(starts, links[:, col], side="right") - 1
        bad = np.nonzero((pos < 0) | (links[:, col] >= ends[pos.clip(0)]))[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{lwhere}, line {int(link_lines[i])}: node id {int(links[i, col])} is not in "
                f"{where}"
            )

    def type_of(g: np.ndarray) -> np.ndarray:
        return tids[np.searchsorted(starts, g, side="right") - 1]

    link_info = info.get("link.dat", {}).get("link type", {})
    edge_index_dict: dict[EdgeType, Tensor] = {}
    link_names: dict[int, EdgeType] = {}
    for lt in np.unique(links[:, 2]).tolist():
        sel = links[links[:, 2] == lt]
        ts, td = np.unique(type_of(sel[:, 0])), np.unique(type_of(sel[:, 1]))
        if ts.size != 1 or td.size != 1:
            raise ValueError(
                f"{lwhere}: link type {lt} joins several node types; HGB links join one pair"
            )
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
    texts = {m: src.read(m) for m in ("label.dat", _PUBLIC, _FULL)}
    parsed = {m: _parse_labels(t, src.where(m)) for m, t in texts.items()}
    if not parsed["label.dat"]:
        raise ValueError(f"{src.where('label.dat')} is empty or missing: no labelled nodes")
    tt = parsed["label.dat"][0][1]  # the labelled type: that of label.dat's first row
    if tt not in offsets:
        raise ValueError(f"{src.name}: labelled node type {tt} has no nodes in {where}")
    target, off, n_t = type_names[tt], offsets[tt], counts[tt]
    for m, label_rows in parsed.items():
        for gid, t, _, lineno in label_rows:
            if t != tt or not off <= gid < off + n_t:
                raise ValueError(
                    f"{src.where(m)}, line {lineno}: node {gid} is not of the labelled type {tt} "
                    f"(ids {off}..{off + n_t - 1}); all labels must be on one node type"
                )
    train, public, full = ([(g, lab) for g, _, lab, _ in parsed[m]] for m in parsed)
    all_rows = train + full + public
    multilabel = any(len(lab) != 1 for _, lab in all_rows)
    label_names = info.get("label.dat", {}).get("node type", {}).get(str(tt), {})
    num_classes = max(
        max((max(lab) for _, lab in all_rows if lab), default=-1) + 1, len(label_names)
    )

    def write(y: Tensor, rows: _LabelRows) -> None:
        for gid, lab in rows:
            if multilabel:
                y[gid - off] = 0.0
                y[gid - off, lab] = 1.0
            else:
                y[gid - off] = lab[0]

    def new_y() -> Tensor:
        if multilabel:
            return torch.zeros(n_t, num_classes)
        return torch.full((n_t,), -1, dtype=torch.long)

    def votes() -> Tensor:
        known = torch.zeros(n_t, num_classes)
        for gid, lab in train:
            known[gid - off, lab] = 1.0
        return label_vote(graph, target, known)

    test_file, agreement, reason = _choose_test_file(
        test_labels, public, full, texts[_PUBLIC] is not None, texts[_FULL] is not None,
        src.name, votes, off,
    )  # fmt: skip
    if agreement is not None and agreement < AGREEMENT_THRESHOLD:
        log.warning(reason if test_labels == "auto" else f"{src.name}: {reason}")
    else:
        log.info("%s: evaluating on %s (%s)", src.name, test_file, reason)
    test = full if test_file == _FULL else public
    y = new_y()
    write(y, train)
    if agreement is None or agreement >= AGREEMENT_THRESHOLD:  # consistent: both files fill y
        write(y, public if test_file == _FULL else full)
    write(y, test)  # the chosen file's labels win

    def idx(rows: _LabelRows) -> Tensor:
        return torch.tensor([g - off for g, _ in rows], dtype=torch.long)

    return HGBData(
        graph=graph, target=target, y=y, num_classes=num_classes, multilabel=multilabel,
        train_idx=idx(train), test_idx=idx(test), public_test_idx=idx(public),
        type_names=type_names, link_names=link_names, name=src.name, test_file=test_file,
        label_agreement=agreement, test_file_reason=reason,
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
