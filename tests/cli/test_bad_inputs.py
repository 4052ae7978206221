"""One table of bad inputs for every CLI subcommand: exit code 2, one ``error:`` line, no traceback.

Each row is a command line (``{bad}`` a garbage file, ``{dir}`` an empty folder, ``{missing}`` a
path that does not exist, ``{file}`` a plain file where a folder is expected) and a word the
error line must contain. Extend the table when a command or an option appears:
``test_every_command_is_in_the_table`` fails for a command without a row.
"""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from batchcraft.cli.main import _attach_subcommands, app
from tests.helpers import assert_one_line_error

_attach_subcommands()
runner = CliRunner()

BAD: list[tuple[str, str]] = [
    # bench / reproduce
    ("bench no-such-bench", "no-such-bench"),
    ("reproduce no-such-experiment --out {dir}", "no-such-experiment"),
    ("reproduce adan --seeds 0 --out {dir}", "seeds"),
    ("reproduce adan --out {file}", "folder"),
    # lm train
    ("lm train --steps 0 --out {dir}/r", "steps"),
    ("lm train --steps -1 --out {dir}/r", "steps"),
    ("lm train --lr nan --out {dir}/r", "lr"),
    ("lm train --lr -1 --out {dir}/r", "lr"),
    ("lm train --chunk 0 --out {dir}/r", "chunk"),
    ("lm train --context 0 --out {dir}/r", "context"),
    ("lm train --window -2 --out {dir}/r", "window"),
    ("lm train --batch 0 --out {dir}/r", "batch"),
    ("lm train --warmup -1 --out {dir}/r", "warmup"),
    ("lm train --eval-every -1 --out {dir}/r", "eval"),
    ("lm train --ckpt-every -1 --out {dir}/r", "ckpt"),
    ("lm train --val-fraction 1.5 --out {dir}/r", "fraction"),
    ("lm train --val-fraction nan --out {dir}/r", "fraction"),
    ("lm train --optimizer sgdx --out {dir}/r", "optimizer"),
    ("lm train --schedule sometimes --out {dir}/r", "schedule"),
    ("lm train --preset huge --out {dir}/r", "preset"),
    ("lm train --parallel pipeline --out {dir}/r", "parallel"),
    ("lm train --device tpu --out {dir}/r", "device"),
    ("lm train --text {missing} --out {dir}/r", "missing"),
    ("lm train --data {missing} --out {dir}/r", "missing"),
    ("lm train --data {dir} --out {dir}/r", "manifest"),
    ("lm train --out {file}", "folder"),
    ("lm train --ttt maybe --out {dir}/r", "ttt"),
    ("lm train --inner-lr 0 --out {dir}/r", "inner"),
    ("lm train --inner-lr nan --out {dir}/r", "inner"),
    ("lm train --task poem --out {dir}/r", "task"),
    ("lm train --task recall --pairs 64 --out {dir}/r", "pairs"),
    ("lm train --task recall --gap -1 --out {dir}/r", "gap"),
    ("lm train --model swa --ttt off --out {dir}/r", "ttt"),
    ("lm train --task recall --pairs 0 --out {dir}/r", "pairs"),
    ("lm train --task recall --text {file} --out {dir}/r", "recall"),
    ("lm train --inner-lr inf --out {dir}/r", "inner"),
    ("lm train --model mamba --out {dir}/r", "model"),
    ("lm train --text {file} --context 256 --out {dir}/r", "context"),
    ("lm train --out {file}/sub", "directory"),
    # lm eval / generate / export / plan
    ("lm eval --checkpoint {missing}", "missing"),
    ("lm eval --checkpoint {dir}", "checkpoint"),
    ("lm eval --checkpoint {bad}", "checkpoint"),
    ("lm eval --checkpoint {dir} --ttt maybe", "ttt"),
    ("lm eval --checkpoint {dir} --task copy", "task"),
    ("lm generate --checkpoint {missing}", "missing"),
    ("lm generate --checkpoint {dir} --top-k 0", "top"),
    ("lm generate --checkpoint {dir} --temperature nan", "temperature"),
    ("lm generate --checkpoint {dir} --max-new-tokens -1", "tokens"),
    ("lm export --checkpoint {missing} --out {dir}/hf", "missing"),
    ("lm export --checkpoint {dir} --out {dir}/hf", "checkpoint"),
    ("lm plan --gpus 0", "gpus"),
    ("lm plan --gpu-mem -1", "mem"),
    ("lm plan --context 0", "context"),
    ("lm plan --preset huge", "preset"),
    ("lm plan --cp 0", "cp"),
    # nvs
    ("nvs train --inputs -1 --out {dir}/r", "view"),
    ("nvs train --steps 0 --out {dir}/r", "steps"),
    ("nvs train --lr nan --out {dir}/r", "lr"),
    ("nvs train --batch-size 0 --out {dir}/r", "batch"),
    ("nvs train --views 0 --out {dir}/r", "views"),
    ("nvs train --style fancy --out {dir}/r", "style"),
    ("nvs train --out {file}", "folder"),
    ("nvs eval --checkpoint {missing}", "missing"),
    ("nvs eval --checkpoint {bad}", "checkpoint"),
    ("nvs render --checkpoint {missing} --out {dir}/x.png", "missing"),
    # graph
    ("graph train --epochs 0", "epochs"),
    ("graph train --lr nan", "lr"),
    ("graph train --batch-size 0", "batch"),
    ("graph train --dropout 1.5", "dropout"),
    ("graph train --fanouts a,b", "fan-outs"),
    ("graph train --dataset nowhere", "nowhere"),
    ("graph train --dataset cora --data-dir {missing}", "missing"),
    ("graph rphgnn --iterations -1 --dataset sbm --out {dir}/r.json", "-1"),
    ("graph rphgnn --epochs 0 --dataset sbm --out {dir}/r.json", "epochs"),
    ("graph rphgnn --dataset ACM --data-dir {missing} --out {dir}/r.json", "missing"),
    ("graph rphgnn --dataset sbm --out {dir}", "folder"),
    # selection
    ("selection hard-batches --delta 0 --out {dir}/r", "delta"),
    ("selection hard-batches --delta 1.5 --out {dir}/r", "delta"),
    ("selection hard-batches --epochs 0 --out {dir}/r", "epochs"),
    ("selection hard-batches --batch-size 0 --out {dir}/r", "batch"),
    ("selection hard-batches --lr nan --out {dir}/r", "lr"),
    ("selection colm --arm nope", "arm"),
    ("selection colm --steps 0", "steps"),
    ("selection colm --b 0", "b"),
    ("selection colm --jsonl {dir}", "folder"),
    # data
    ("data prepare --text {missing} --out {dir}/d", "missing"),
    ("data prepare --text {bad} --tokenizer bpe:0 --out {dir}/d", "vocab"),
    ("data prepare --text {bad} --val-fraction 2 --out {dir}/d", "fraction"),
    ("data prepare --text {bad} --workers 0 --out {dir}/d", "workers"),
    ("data prepare --text {bad} --out {file}", "folder"),
]


def _argv(row: str, tmp_path) -> list[str]:
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00garbage, not a checkpoint\xff" * 3)
    f = tmp_path / "plain.txt"
    f.write_text("a file, not a folder\n")
    subs = {"bad": bad, "dir": d, "missing": tmp_path / "missing", "file": f}
    return [a.format(**subs) for a in shlex.split(row)]


@pytest.mark.parametrize("row,word", BAD, ids=[r for r, _ in BAD])
def test_bad_input_is_one_clean_line(row, word, tmp_path):
    res = runner.invoke(app, _argv(row, tmp_path))
    assert_one_line_error(res)
    assert word.lower() in res.output.lower().replace("\n", " "), res.output


def test_every_command_is_in_the_table():
    import typer.main

    group = typer.main.get_command(app)
    leaves = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        leaves += [f"{name} {s}" for s in subs] if subs else [name]
    covered = {" ".join(shlex.split(r)[:2]) for r, _ in BAD} | {shlex.split(r)[0] for r, _ in BAD}
    missing = [c for c in leaves if c not in covered and c != "info"]
    assert not missing, f"add bad-input rows for: {missing}"
