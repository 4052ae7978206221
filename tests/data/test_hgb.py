"""HGB loader: hand-written folders (single- and multi-label, CRLF, empty names, zip), real ACM/DBLP counts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from batchcraft.data.hetero_sbm import hetero_sbm
from batchcraft.data.hgb import hgb_split, load_hgb

# 3 movies (ids 0-2, 2-d features), 2 directors (3-4, none), 2 keywords (5-6, none)
NODES = [
    "0\tThe Movie\t0\t1.0,0.0",
    "1\t\t0\t0.5,0.5",  # empty name
    "2\tA\tlong\ttitle\t0\t0.0,1.0",  # tab in the name is not allowed by HGB: see test below
    "3\tdir a\t1",
    "4\tdir b\t1",
    "5\tkw\t2",
    "6\tkw2\t2",
]
LINKS = [
    "0\t3\t0\t1.0",
    "1\t3\t0\t1.0",
    "2\t4\t0\t1.0",
    "3\t0\t1\t1.0",
    "3\t1\t1\t1.0",
    "4\t2\t1\t1.0",
    "0\t5\t2\t1",
]
INFO = {
    "node.dat": {"node type": {"0": "movie", "1": "director", "2": "keyword"}},
    "link.dat": {
        "link type": {
            "0": {"start": 0, "end": 1, "meaning": "movie-director"},
            "1": {"start": 1, "end": 0, "meaning": "director-movie"},
            "2": {"start": 0, "end": 2, "meaning": "movie-keyword"},
        }
    },
}


def write_folder(
    root: Path, *, multilabel: bool, crlf: bool = False, meta: bool = False, name_tab: bool = False
) -> Path:
    d = root / "TOY"
    d.mkdir(parents=True)
    nl = "\r\n" if crlf else "\n"
    nodes = list(NODES)
    nodes[2] = "2\tA long title\t0\t0.0,1.0" if not name_tab else nodes[2]
    (d / "node.dat").write_bytes(nl.join(nodes).encode() + nl.encode())
    (d / "link.dat").write_bytes(nl.join(LINKS).encode() + nl.encode())
    (d / "info.dat").write_text(json.dumps(INFO))
    if meta:
        (d / "meta.dat").write_text("{}")
    lab = ["0,2", "1"] if multilabel else ["2", "1"]
    (d / "label.dat").write_bytes(
        nl.join([f"0\tThe Movie\t0\t{lab[0]}", f"1\t\t0\t{lab[1]}"]).encode()
    )
    (d / "label.dat.test").write_text("2\tA long title\t0\t0\n")
    (d / "label.dat.test_full").write_text("2\tA long title\t0\t0\n")
    return d


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("meta", [False, True], ids=["no-meta", "meta"])
def test_single_label_folder(tmp_path, crlf, meta):
    data = load_hgb(write_folder(tmp_path, multilabel=False, crlf=crlf, meta=meta))
    g = data.graph
    assert data.name == "TOY" and data.target == "movie" and not data.multilabel
    assert g.num_nodes_dict == {"movie": 3, "director": 2, "keyword": 2}
    assert g.x_dict["director"] is None and g.x_dict["keyword"] is None
    assert torch.equal(g.x_dict["movie"], torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]))
    assert torch.equal(
        g.edge_index_dict[("director", "director-movie", "movie")],
        torch.tensor([[0, 0, 1], [0, 1, 2]]),
    )
    assert torch.equal(
        g.edge_index_dict[("movie", "movie-keyword", "keyword")], torch.tensor([[0], [0]])
    )
    assert data.num_classes == 3
    assert data.y.tolist() == [2, 1, 0]
    assert data.train_idx.tolist() == [0, 1] and data.test_idx.tolist() == [2]
    assert data.test_file == "label.dat.test_full"
    assert data.link_names[2] == ("movie", "movie-keyword", "keyword")


def test_multilabel_folder_and_zip(tmp_path):
    folder = write_folder(tmp_path, multilabel=True)
    data = load_hgb(folder)
    assert data.multilabel and data.num_classes == 3
    assert data.y.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    zpath = tmp_path / "TOY.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"TOY/{f.name}")
    zdata = load_hgb(zpath, test_labels="public")
    assert zdata.test_file == "label.dat.test"
    assert torch.equal(zdata.y, data.y) and zdata.name == "TOY"
    assert load_hgb(tmp_path).name == "TOY"  # parent folder holding one dataset


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="test_labels"):
        load_hgb(tmp_path, test_labels="half")
    with pytest.raises(ValueError, match=r"node\.dat"):
        load_hgb(tmp_path)
    folder = write_folder(tmp_path / "a", multilabel=False)
    (folder / "label.dat.test_full").unlink()
    with pytest.raises(ValueError, match="test_labels='public'"):
        load_hgb(folder)
    assert load_hgb(folder, test_labels="public").test_idx.tolist() == [2]
    bad = write_folder(tmp_path / "b", multilabel=False, name_tab=True)  # a tab inside a name
    with pytest.raises(ValueError):
        load_hgb(bad)


def test_split_is_stratified_seeded_and_disjoint():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = torch.arange(100)
    tr, va = hgb_split(idx, y, generator=torch.Generator().manual_seed(0))
    tr2, va2 = hgb_split(idx, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert va.numel() == 20 and tr.numel() == 80
    assert torch.bincount(y[va]).tolist() == [10, 6, 4]
    assert not set(tr.tolist()) & set(va.tolist())
    ym = torch.zeros(10, 3)
    tr, va = hgb_split(
        torch.arange(10), ym, multilabel=True, generator=torch.Generator().manual_seed(1)
    )
    assert va.numel() == 2 and tr.numel() == 8
    with pytest.raises(ValueError, match="val_ratio"):
        hgb_split(idx, y, val_ratio=1.0)


def test_hetero_sbm_is_seeded_and_well_formed():
    a = hetero_sbm(num_papers=200, num_authors=40, generator=torch.Generator().manual_seed(0))
    b = hetero_sbm(num_papers=200, num_authors=40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.y, b.y) and torch.equal(a.graph.x_dict["paper"], b.graph.x_dict["paper"])
    assert a.graph.num_nodes_dict == {"paper": 200, "author": 40, "venue": 20}
    assert a.train_idx.numel() == 80 and a.test_idx.numel() == 120
    # authors' links mostly stay in class: author home class = id % C
    ei = a.graph.edge_index_dict[("paper", "writes_by", "author")]
    same = (a.y[ei[0]] == ei[1] % 4).float().mean()
    assert float(same) > 0.85
    with pytest.raises(ValueError, match="num_classes"):
        hetero_sbm(num_classes=1)
    with pytest.raises(ValueError, match="p_in"):
        hetero_sbm(p_in=1.5)


SPEC_COUNTS = {
    "ACM": dict(
        nodes={"paper": 3025, "author": 5959, "subject": 56, "term": 1902},
        dims={"paper": 1902, "author": 1902, "subject": 1902, "term": None},
        links=547872, link_types=8, raw=4, target="paper", classes=3, train=907, test=2118, public=1059,
    ),
    "DBLP": dict(
        nodes={"author": 4057, "paper": 14328, "term": 7723, "venue": 20},
        dims={"author": 334, "paper": 4231, "term": 50, "venue": None},
        links=239566, link_types=6, raw=3, target="author", classes=4, train=1217, test=2840, public=1420,
    ),
}  # fmt: skip


@pytest.mark.data
@pytest.mark.parametrize(
    "name",
    ["ACM", pytest.param("DBLP", marks=pytest.mark.slow)],  # DBLP: 127 MB of node.dat
)
def test_real_counts_match_spec_table(data_dir, name):
    from batchcraft.graph.hetero import canonicalize_relations

    path = Path(data_dir) / f"{name}.zip"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with pytest.warns(UserWarning, match="agrees"):  # the archives' two test files disagree
        d, c = load_hgb(path), SPEC_COUNTS[name]
    assert d.label_agreement is not None and d.label_agreement < 0.5
    g = d.graph
    assert g.num_nodes_dict == c["nodes"]
    assert {t: None if x is None else x.shape[1] for t, x in g.x_dict.items()} == c["dims"]
    assert g.num_edges() == c["links"] and len(g.edge_index_dict) == c["link_types"]
    _, raw = canonicalize_relations(g.edge_index_dict, g.num_nodes_dict)
    assert len(raw) == c["raw"]  # transposed pairs detected (ACM: 4 pairs incl. cite/ref)
    assert (d.target, d.num_classes, d.multilabel) == (c["target"], c["classes"], False)
    assert (d.train_idx.numel(), d.test_idx.numel(), d.public_test_idx.numel()) == (
        c["train"], c["test"], c["public"],
    )  # fmt: skip
    assert set(d.public_test_idx.tolist()) <= set(d.test_idx.tolist())
    assert int((d.y[d.test_idx] >= 0).sum()) == c["test"]


def test_disagreeing_test_files_warn_and_the_chosen_file_wins(tmp_path):
    folder = write_folder(tmp_path, multilabel=False)
    (folder / "label.dat.test_full").write_text("2\tA long title\t0\t1\n")  # public says 0
    with pytest.warns(UserWarning, match="agrees"):
        full = load_hgb(folder)
    assert full.label_agreement == 0.0 and int(full.y[2]) == 1
    with pytest.warns(UserWarning):
        public = load_hgb(folder, test_labels="public")
    assert int(public.y[2]) == 0 and public.test_file == "label.dat.test"
    assert load_hgb(write_folder(tmp_path / "ok", multilabel=False)).label_agreement == 1.0
