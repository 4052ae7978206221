"""`batchcraft data prepare`: prepares, is a no-op on a re-run, refuses bad input in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from batchcraft.cli.main import _attach_subcommands, app
from batchcraft.data.shards import TokenShards

runner = CliRunner()
_attach_subcommands()


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    d = tmp_path / "text"
    d.mkdir()
    for i in range(6):
        body = "".join(f"line {j} of file {i}: alpha beta gamma {i * j}\n" for j in range(80))
        (d / f"f{i}.txt").write_text(body)
    return d


def test_prepare_then_rerun_is_a_no_op(text_dir, tmp_path):
    out = tmp_path / "tok"
    args = ["data", "prepare", "--text", str(text_dir), "--tokenizer", "bpe:300", "--out",
            str(out), "--val-fraction", "0.3"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "prepared" in res.output and "bytes/token" in res.output
    shards = TokenShards(out)
    assert shards.manifest["tokenizer"]["name"] == "bpe:300"
    assert shards.manifest["splits"]["val"]["tokens"] > 0
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0, res2.output
    assert "up to date" in res2.output and "nothing to do" in res2.output


def test_bytes_is_the_default_and_a_single_file_gets_a_val_split(text_dir, tmp_path):
    res = runner.invoke(
        app, ["data", "prepare", "--text", str(text_dir / "f0.txt"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    m = TokenShards(tmp_path / "o").manifest
    assert m["tokenizer"]["name"] == "bytes" and m["split_rule"] == "within-file"
    assert m["splits"]["val"]["tokens"] > 0 and m["splits"]["train"]["tokens"] > 0


BAD = {
    "missing text": (["--text", "{tmp}/nope"], "does not exist"),
    "bpe vocab too small": (["--tokenizer", "bpe:100"], ">= 257"),
    "bpe vocab not a number": (["--tokenizer", "bpe:many"], ">= 257"),
    "unknown tokenizer": (["--tokenizer", "wordpiece"], "is not 'bytes'"),
    "tokenizer folder without tokenizer.json": (["--tokenizer", "{tmp}"], "is not 'bytes'"),
    "val fraction 0": (["--val-fraction", "0"], "val-fraction"),
    "val fraction 1.5": (["--val-fraction", "1.5"], "val-fraction"),
    "val fraction negative": (["--val-fraction", "-0.1"], "val-fraction"),
    "val fraction nan": (["--val-fraction", "nan"], "val-fraction"),
    "workers 0": (["--workers", "0"], "workers"),
    "workers negative": (["--workers", "-3"], "workers"),
    "shard tokens 0": (["--shard-tokens", "0"], "shard-tokens"),
    "out is a file": (["--out", "{tmp}/afile"], "is a file"),
    "out under a file": (["--out", "{tmp}/afile/sub"], "cannot be created"),
    "no text files": (["--text", "{tmp}/emptydir"], "no text files"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, text_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "emptydir").mkdir()
    extra, match = BAD[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    args = {"--text": str(text_dir), "--out": str(tmp_path / "out")}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    res = runner.invoke(app, ["data", "prepare", *(x for kv in args.items() for x in kv)])
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "Traceback" not in res.output


def test_real_entry_point_prints_no_traceback(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "batchcraft.cli.main", "data", "prepare", "--text",
         str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr
