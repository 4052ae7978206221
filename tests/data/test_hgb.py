"""HGB loader: hand-written folders (single- and multi-label, CRLF, empty names, zip), real ACM/DBLP counts."""

from __future__ import annotations

import json
import logging
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
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_hgb(tmp_path / "nothing_here.zip")
    folder = write_folder(tmp_path / "a", multilabel=False)
    (folder / "label.dat.test_full").unlink()
    with pytest.raises(ValueError, match="test_labels='public'"):
        load_hgb(folder, test_labels="full")
    auto = load_hgb(folder)  # only label.dat.test exists: auto uses it and says so
    assert auto.test_file == "label.dat.test" and "only label.dat.test" in auto.test_file_reason
    assert load_hgb(folder, test_labels="public").test_idx.tolist() == [2]
    bad = write_folder(tmp_path / "b", multilabel=False, name_tab=True)  # a tab inside a name
    with pytest.raises(ValueError, match=r"node\.dat, line 3: expected 'id, name, type"):
        load_hgb(bad)
    folder = write_folder(tmp_path / "c", multilabel=False)
    (folder / "info.dat").write_text("{not json")
    with pytest.raises(ValueError, match=r"info\.dat is not valid JSON"):
        load_hgb(folder)


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
    with pytest.warns(UserWarning, match="agrees"):  # explicit full: the files disagree
        d, c = load_hgb(path, test_labels="full"), SPEC_COUNTS[name]
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


@pytest.mark.data
def test_real_acm_default_picks_the_consistent_test_file(data_dir, caplog):
    """The shared ACM archive's test_full agrees with label.dat.test on 351 of 1,059 nodes; the
    default must not evaluate on it, and must say which file it used."""
    path = Path(data_dir) / "ACM.zip"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with caplog.at_level(logging.WARNING, logger="batchcraft.data.hgb"):
        d = load_hgb(path)
    assert d.test_file == "label.dat.test" and d.test_idx.numel() == 1059
    assert round(d.label_agreement * 1059) == 351
    assert "label.dat.test" in caplog.text and "2-hop label vote" in d.test_file_reason
    public = {int(i) for i in d.public_test_idx}
    assert set(d.test_idx.tolist()) == public


# ---------------------------------------------------------------- test-file choice (hand-made)

# 8 movies (0-7) and 2 directors (8: "A", 9: "B"); movies 0, 1, 4, 6 share A and 2, 3, 5, 7
# share B, so a label vote through the directors predicts class 0 for movies 4, 6 and 1 for 5, 7.
VOTE_NODES = [f"{i}\tm{i}\t0\t{i % 2}.0,1.0" for i in range(8)] + ["8\tA\t1", "9\tB\t1"]
VOTE_LINKS = [f"{m}\t{8 if m in (0, 1, 4, 6) else 9}\t0\t1.0" for m in range(8)]
TRAIN = {0: 0, 1: 0, 2: 1, 3: 1}
CONSISTENT = {4: 0, 5: 1, 6: 0, 7: 1}
SCRAMBLED = {4: 1, 5: 0, 6: 1, 7: 0}


def write_hgb(root: Path, public: dict, full: dict, *, links=VOTE_LINKS, zipped=False) -> Path:
    d = root / "VOTE"
    d.mkdir(parents=True)
    (d / "node.dat").write_text("\n".join(VOTE_NODES) + "\n")
    (d / "link.dat").write_text("\n".join(links) + "\n")

    def labels(rows: dict) -> str:
        return "".join(f"{i}\t\t0\t{c}\n" for i, c in rows.items())

    (d / "label.dat").write_text(labels(TRAIN))
    (d / "label.dat.test").write_text(labels(public))
    (d / "label.dat.test_full").write_text(labels(full))
    if not zipped:
        return d
    zpath = root / "VOTE.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for f in d.iterdir():
            z.write(f, f"VOTE/{f.name}")
    return zpath


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_agreeing_test_files_use_the_full_set(tmp_path, zipped):
    path = write_hgb(tmp_path, public={4: 0, 5: 1}, full=CONSISTENT, zipped=zipped)
    d = load_hgb(path)
    assert d.test_file == "label.dat.test_full" and d.label_agreement == 1.0
    assert d.test_idx.tolist() == [4, 5, 6, 7] and d.y[4:].tolist() == [0, 1, 0, 1]
    assert "agree" in d.test_file_reason


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_disagreeing_full_file_is_not_the_default(tmp_path, caplog, zipped):
    """test_full scrambled (as in the shared archives): the default evaluates on label.dat.test,
    logs why, and keeps the scrambled labels out of y."""
    path = write_hgb(tmp_path, public={4: 0, 5: 1}, full=SCRAMBLED, zipped=zipped)
    with caplog.at_level(logging.WARNING, logger="batchcraft.data.hgb"):
        d = load_hgb(path)
    assert d.test_file == "label.dat.test" and d.label_agreement == 0.0
    assert d.test_idx.tolist() == [4, 5] and d.y[4:6].tolist() == [0, 1]
    assert d.y[6:].tolist() == [-1, -1]  # the rejected file's private half is not used
    assert "using label.dat.test" in d.test_file_reason and "using label.dat.test" in caplog.text
    with pytest.warns(UserWarning, match="agrees"):  # asking for the disagreeing file: warned
        full = load_hgb(path, test_labels="full")
    assert full.test_file == "label.dat.test_full" and full.y[4:].tolist() == [1, 0, 1, 0]


def test_disagreeing_public_file_picks_the_full_one(tmp_path):
    """The check is symmetric: when label.dat.test is the inconsistent one, test_full is used."""
    d = load_hgb(write_hgb(tmp_path, public={4: 1, 5: 0}, full=CONSISTENT))
    assert d.test_file == "label.dat.test_full" and d.test_idx.tolist() == [4, 5, 6, 7]
    assert d.y[4:].tolist() == [0, 1, 0, 1]


def test_undecidable_disagreement_stops_with_a_clear_error(tmp_path):
    links = [ln for ln in VOTE_LINKS if not ln.startswith(("4\t", "5\t"))]  # no path to labels
    path = write_hgb(tmp_path, public={4: 0, 5: 1}, full=SCRAMBLED, links=links)
    with pytest.raises(ValueError, match="cannot tell which file is consistent"):
        load_hgb(path)
    assert load_hgb(path, test_labels="public").test_file == "label.dat.test"


def test_label_vote_is_the_two_hop_mean():
    from batchcraft.data.hetero_graph import HeteroGraph
    from batchcraft.data.hgb import label_vote

    # papers 0-2, authors 0-1: paper 0 and 1 by author 0; paper 1 and 2 by author 1
    g = HeteroGraph(
        {"paper": None, "author": None},
        {("paper", "by", "author"): torch.tensor([[0, 1, 1, 2], [0, 0, 1, 1]])},
        {"paper": 3, "author": 2},
    )
    known = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # paper 1 unlabelled
    votes = label_vote(g, "paper", known)
    # author 0 mean = (p0 + p1) / 2 = [0.5, 0]; author 1 = (p1 + p2) / 2 = [0, 0.5]
    expected = torch.tensor([[0.5, 0.0], [0.25, 0.25], [0.0, 0.5]])
    torch.testing.assert_close(votes, expected)


# ---------------------------------------------------------------- malformed files, size caps


@pytest.mark.parametrize(
    ("member", "line", "match"),
    [
        ("node.dat", "x1\tname\t0\t1.0,2.0", r"node\.dat, line 2: the node id must be an integer"),
        ("node.dat", "1\tname\tpaper\t1.0,2.0", r"node\.dat, line 2: the node type must be"),
        ("node.dat", "1\tname\t0\t1.0,abc", r"node\.dat, line 2: feature 'abc' is not a number"),
        ("node.dat", "1\tname\t0\t1.0", r"node\.dat, line 2: 1 features, but line 1 has 2"),
        ("link.dat", "0\t9", r"link\.dat, line 2: expected 'src, dst, link_type, weight'"),
        ("link.dat", "0\t9\tzero\t1.0", r"link\.dat, line 2: 'zero' is not a number"),
        ("link.dat", "0\t9.5\t0\t1.0", r"link\.dat, line 2: src, dst and link_type must be"),
        ("link.dat", "0\t99\t0\t1.0", r"link\.dat, line 2: node id 99 is not in"),
        ("label.dat", "1\t\t0\tone", r"label\.dat, line 2: a label must be an integer"),
        ("label.dat", "8\t\t1\t0", r"label\.dat, line 2: node 8 is not of the labelled type"),
    ],
    ids=["node-id", "node-type", "feature", "width", "link-fields", "link-number", "link-float",
         "link-range", "label", "label-type"],
)  # fmt: skip
def test_malformed_lines_name_file_and_line(tmp_path, member, line, match):
    folder = write_hgb(tmp_path, public={4: 0, 5: 1}, full=CONSISTENT)
    rows = (folder / member).read_text().splitlines()
    rows[1] = line  # the second line of the file
    (folder / member).write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=match):
        load_hgb(folder)


def test_size_cap_on_members_read_into_memory(tmp_path):
    zpath = write_hgb(tmp_path, public={4: 0, 5: 1}, full=CONSISTENT, zipped=True)
    with pytest.raises(
        ValueError, match=r"node\.dat is \d+ bytes uncompressed, over the 64-byte cap"
    ):
        load_hgb(zpath, max_member_bytes=64)
    with pytest.raises(ValueError, match="over the 64-byte cap"):
        load_hgb(tmp_path / "VOTE", max_member_bytes=64)  # folders obey the same cap
    assert load_hgb(zpath, max_member_bytes=10_000).test_file == "label.dat.test_full"
    with pytest.raises(ValueError, match="max_member_bytes"):
        load_hgb(zpath, max_member_bytes=0)


def test_zip_bomb_member_is_refused_before_inflating(tmp_path):
    """A small archive whose member inflates to 64 MiB is refused from its header."""
    zpath = tmp_path / "BOMB.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("BOMB/node.dat", b"0" * (64 << 20))
        z.writestr("BOMB/link.dat", b"")
    assert zpath.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="cap"):
        load_hgb(zpath, max_member_bytes=1 << 20)
