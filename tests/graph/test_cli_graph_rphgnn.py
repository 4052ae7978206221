"""``batchcraft graph rphgnn``: data folder lookup, clean errors, cache timing, test-label choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from batchcraft.cli.graph_rphgnn import register

runner = CliRunner()
FAST = ["--epochs", "2", "-K", "1"]


def _flat(output: str) -> str:
    """The output without rich's box drawing and line wrapping, and with no spaces at all."""
    return "".join(c for c in output if c not in "│╭╮╰╯─" and not c.isspace())


def _words(output: str) -> str:
    """The output without rich's box drawing, whitespace collapsed."""
    return " ".join("".join(c for c in output if c not in "│╭╮╰╯─").split())


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "rphgnn" as a sub-command
    return app


def test_bad_hyper_parameters_exit_2_with_a_message(tmp_path: Path) -> None:
    out = str(tmp_path / "r.json")
    for args, match in [
        (["-K", "-1"], "num_iterations (K) must be an int >= 1, got -1"),
        (["--epochs", "0"], "epochs must be an int >= 1"),
        (["--test-labels", "half"], "test-labels must be"),
        (["--method", "gat"], "method must be one of"),
        (["--out", str(tmp_path)], "is a folder; give a file name"),
    ]:
        res = runner.invoke(_app(), ["rphgnn", "--out", out, *args])
        assert res.exit_code == 2, res.output
        assert match in _words(res.output), res.output
        assert "Traceback" not in res.output


def test_missing_dataset_names_the_paths_tried(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "data"
    empty.mkdir()
    out = str(tmp_path / "r.json")
    res = runner.invoke(
        _app(), ["rphgnn", "--dataset", "ACM", "--data-dir", str(empty), "--out", out]
    )
    assert res.exit_code == 2
    assert str(empty / "ACM.zip") in _flat(res.output) and "neither" not in res.output
    res = runner.invoke(
        _app(), ["rphgnn", "--dataset", "ACM", "--data-dir", str(tmp_path / "nope"), "--out", out]
    )
    assert res.exit_code == 2 and "does not exist" in _words(res.output)
    monkeypatch.setenv("BATCHCRAFT_DATA", str(empty))  # $BATCHCRAFT_DATA is searched too
    res = runner.invoke(_app(), ["rphgnn", "--dataset", "ACM", "--out", out])
    assert res.exit_code == 2 and str(empty / "ACM.zip") in _flat(res.output)
    res = runner.invoke(_app(), ["rphgnn", "--dataset", str(tmp_path / "x.zip"), "--out", out])
    assert res.exit_code == 2 and "no such file" in _words(res.output)


def _write_toy_zip(folder: Path) -> None:
    """``TOY.zip``: 8 papers (2-d features) linked to 2 authors; labels agree across test files."""
    import zipfile

    nodes = [f"{i}\tp{i}\t0\t{i % 2}.0,1.0" for i in range(8)] + ["8\tA\t1", "9\tB\t1"]
    links = [f"{m}\t{8 if m in (0, 1, 4, 6) else 9}\t0\t1.0" for m in range(8)]

    def labels(rows: dict[int, int]) -> str:
        return "".join(f"{i}\t\t0\t{c}\n" for i, c in rows.items())

    with zipfile.ZipFile(folder / "TOY.zip", "w") as z:
        z.writestr("TOY/node.dat", "\n".join(nodes))
        z.writestr("TOY/link.dat", "\n".join(links))
        z.writestr("TOY/label.dat", labels({0: 0, 1: 0, 2: 1, 3: 1, 6: 0, 7: 1}))
        z.writestr("TOY/label.dat.test", labels({4: 0}))
        z.writestr("TOY/label.dat.test_full", labels({4: 0, 5: 1}))


def test_data_dir_finds_the_dataset_and_reports_the_test_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_toy_zip(data)
    out = tmp_path / "r.json"
    res = runner.invoke(
        _app(), ["rphgnn", "--dataset", "TOY", "--data-dir", str(data), *FAST, "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "test labels: label.dat.test_full" in res.output
    rec = json.loads(out.read_text())["runs"][0]
    assert rec["test_file"] == "label.dat.test_full"


def test_cache_reports_real_compute_time_then_loaded_from_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["rphgnn", "--dataset", "sbm", *FAST, "--cache", str(cache)]
    first = runner.invoke(_app(), [*args, "--out", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    rec_a = json.loads((tmp_path / "a.json").read_text())["runs"][0]
    assert rec_a["groups_source"] == "computed" and rec_a["precompute_s"] > 0.0
    assert rec_a["total_s"] >= rec_a["precompute_s"]
    assert f"precompute {rec_a['precompute_s']:.2f}s" in first.output
    assert "loaded from cache" not in first.output
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1  # tensors only: no pickle in the cache
    second = runner.invoke(_app(), [*args, "--out", str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output
    assert "loaded from cache" in second.output
    rec_b = json.loads((tmp_path / "b.json").read_text())["runs"][0]
    assert rec_b["groups_source"] == "cache"
    assert rec_b["test_micro"] == pytest.approx(rec_a["test_micro"])  # same groups, same run
    other_k = runner.invoke(
        _app(), ["rphgnn", "--dataset", "sbm", "--epochs", "2", "-K", "2", "--cache", str(cache),
                 "--out", str(tmp_path / "c.json")],
    )  # fmt: skip
    assert other_k.exit_code == 0 and "loaded from cache" not in other_k.output
    files[0].write_bytes(b"garbage")
    bad = runner.invoke(_app(), [*args, "--out", str(tmp_path / "d.json")])
    assert bad.exit_code == 2 and "delete it to recompute" in _words(bad.output)
