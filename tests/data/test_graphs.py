"""Synthetic graph generators and the Planetoid / edge-list parsers."""

from __future__ import annotations

import pickle
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from batchcraft.data.graphs import (
    load_edge_list,
    load_planetoid,
    planted_partition,
    powerlaw_graph,
    to_undirected,
)


def _check_simple_undirected(ei: torch.Tensor, n: int) -> None:
    assert ei.min() >= 0 and ei.max() < n
    assert not bool((ei[0] == ei[1]).any())
    keys = ei[0] * n + ei[1]
    assert keys.unique().numel() == keys.numel()
    rev = ei[1] * n + ei[0]
    assert torch.equal(keys.sort().values, rev.sort().values)


def test_planted_partition_shape_and_homophily() -> None:
    d = planted_partition(4, 100, 0.2, 0.01, seed=3)
    assert d.x.shape == (400, 4) and d.num_classes == 4
    _check_simple_undirected(d.edge_index, 400)
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean()
    assert same > 0.8  # expected 0.2*99 / (0.2*99 + 0.01*300) = 0.87
    splits = torch.cat([d.train_idx, d.val_idx, d.test_idx])
    assert torch.equal(splits.sort().values, torch.arange(400))
    again = planted_partition(4, 100, 0.2, 0.01, seed=3)
    assert torch.equal(again.edge_index, d.edge_index) and torch.equal(again.x, d.x)


def test_powerlaw_graph_properties() -> None:
    d = powerlaw_graph(5000, 10.0, num_features=16, num_classes=5, seed=0)
    _check_simple_undirected(d.edge_index, 5000)
    deg = torch.bincount(d.edge_index[1], minlength=5000).float()
    assert 6 < deg.mean() < 11  # duplicates/self-loops removed from 10 per node
    assert deg.max() > 20 * deg.median()  # heavy tail
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean()
    assert same > 0.6
    assert torch.bincount(d.y).min() > 900
    assert d.x.dtype == torch.float32 and d.x.shape == (5000, 16)
    other = powerlaw_graph(5000, 10.0, num_features=16, num_classes=5, seed=1)
    assert not torch.equal(other.edge_index[:, :100], d.edge_index[:, :100])
    with pytest.raises(ValueError, match="exponent"):
        powerlaw_graph(100, 5.0, exponent=1.0)
    with pytest.raises(ValueError, match="homophily"):
        powerlaw_graph(100, 5.0, homophily=2.0)


def test_to_undirected() -> None:
    ei = torch.tensor([[0, 1, 2, 2], [1, 0, 2, 0]])
    assert to_undirected(ei, 3).tolist() == [[0, 0, 1, 2], [1, 2, 0, 0]]


def _write_tiny_planetoid(folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    sp = pytest.importorskip("scipy.sparse")
    n_feat, n_cls = 3, 2
    allx = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32))
    ally = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.int32)
    x, y = allx[:2], ally[:2]
    # test ids 5 and 7 (id 6 is a gap with no row in tx)
    tx = sp.csr_matrix(np.array([[2, 0, 0], [0, 0, 3]], dtype=np.float32))
    ty = np.array([[0, 1], [1, 0]], dtype=np.int32)
    graph = defaultdict(list, {0: [1, 2], 1: [0], 2: [0, 2], 5: [7], 7: [5, 3]})
    for k, v in dict(x=x, y=y, tx=tx, ty=ty, allx=allx, ally=ally, graph=graph).items():
        (folder / f"ind.tiny.{k}").write_bytes(pickle.dumps(v, protocol=protocol))
    (folder / "ind.tiny.test.index").write_text("7\n5\n")
    assert n_feat == 3 and n_cls == 2


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_planetoid_tiny_folder_and_zip(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    _write_tiny_planetoid(folder, protocol)
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    for src in (folder, zpath):
        d = load_planetoid(src, "tiny")
        assert d.num_nodes == 8 and d.x.shape == (8, 3) and d.num_classes == 2
        # tx/ty row k belongs to node test.index[k] = 7, 5 (file order)
        assert d.x[7].tolist() == [2, 0, 0] and d.x[5].tolist() == [0, 0, 3]
        assert d.y.tolist() == [0, 1, 0, -1, -1, 0, -1, 1]
        assert d.x[6].abs().sum() == 0  # gap row
        assert d.train_idx.tolist() == [0, 1] and d.test_idx.tolist() == [7, 5]
        _check_simple_undirected(d.edge_index, 8)
        edges = set(map(tuple, d.edge_index.t().tolist()))
        assert edges == {(0, 1), (1, 0), (0, 2), (2, 0), (5, 7), (7, 5), (3, 7), (7, 3)}
    with pytest.raises(FileNotFoundError):
        load_planetoid(tmp_path / "missing.zip", "tiny")


class _OpenPayload:
    """Unpickling this creates a file (``builtins.open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


class _SystemPayload:
    """Unpickling this runs a shell command that creates a file (``os.system``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", [_OpenPayload, _SystemPayload], ids=["open", "os.system"])
@pytest.mark.parametrize("member", ["x", "graph"])
def test_crafted_pickle_is_refused_without_running_it(
    tmp_path: Path, payload: type, member: str
) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    _write_tiny_planetoid(folder)
    marker = tmp_path / "pwned"
    blob = pickle.dumps(payload(marker), protocol=2)
    pickle.loads(blob)  # the payload is live: plain pickle creates the file ...
    assert marker.exists()
    marker.unlink()
    (folder / f"ind.tiny.{member}").write_bytes(blob)
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    for src in (zpath, folder):  # ... the loader refuses it and nothing runs
        with pytest.raises(ValueError, match="refusing to unpickle global"):
            load_planetoid(src, "tiny")
        assert not marker.exists()


def test_object_arrays_and_other_globals_are_refused() -> None:
    from batchcraft.data.safe_pickle import load_planetoid_pickle

    with pytest.raises(ValueError, match="dtype object"):
        load_planetoid_pickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle global collections\.OrderedDict"):
        load_planetoid_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    with pytest.raises(ValueError, match="not a readable Planetoid pickle"):
        load_planetoid_pickle(b"\x80\x02garbage")


def test_planetoid_size_cap(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    _write_tiny_planetoid(folder)
    zpath = tmp_path / "tiny.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    with pytest.raises(ValueError, match="over the 100-byte cap"):
        load_planetoid(zpath, "tiny", max_member_bytes=100)
    with pytest.raises(ValueError, match="over the 100-byte cap"):
        load_planetoid(folder, "tiny", max_member_bytes=100)
    assert load_planetoid(zpath, "tiny", max_member_bytes=100_000).num_nodes == 8


def test_load_edge_list(tmp_path: Path) -> None:
    p = tmp_path / "g.txt"
    p.write_text("# comment\n0 1\n1 2  # trailing\n\n4 0\n")
    ei, n = load_edge_list(p)
    assert ei.tolist() == [[0, 1, 4], [1, 2, 0]] and n == 5
    assert load_edge_list(p, num_nodes=9)[1] == 9
    with pytest.raises(ValueError, match="smaller"):
        load_edge_list(p, num_nodes=2)
    p.write_text("0\n")
    with pytest.raises(ValueError, match="src dst"):
        load_edge_list(p)


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "nodes", "feats", "classes", "edges"),
    [("cora", 2708, 1433, 7, 10556), ("citeseer", 3327, 3703, 6, 9104)],
)
def test_real_planetoid(
    data_dir: Path, name: str, nodes: int, feats: int, classes: int, edges: int
) -> None:
    zpath = data_dir / f"{name}.zip"
    if not zpath.exists():
        pytest.skip(f"{zpath} absent")
    d = load_planetoid(zpath)
    assert d.x.shape == (nodes, feats) and d.num_classes == classes and d.num_edges == edges
    assert d.test_idx.numel() == 1000 and d.val_idx.numel() == 500
    same = (d.y[d.edge_index[0]] == d.y[d.edge_index[1]]).float().mean()
    assert same > 0.7  # citation graphs are homophilous (Cora 0.81, CiteSeer 0.74)
