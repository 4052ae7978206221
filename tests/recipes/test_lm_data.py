"""The tokenized-corpus workflow from the README: data prepare (BPE) -> lm train --data -> kill and
resume exactly -> lm eval (bits per byte) -> lm generate -> lm export --hf (AutoTokenizer +
AutoModelForCausalLM), and the errors on corrupt shards and mismatched vocabularies."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import assert_one_line_error, run_killed_then_resumed
from typer.testing import CliRunner

from batchcraft.cli.main import app
from batchcraft.recipes.lm import load_lm, load_run_tokenizer

pytest.importorskip("tokenizers")
runner = CliRunner()
WORDS = [
    "def",
    "return",
    "class",
    "self",
    "import",
    "if",
    "else",
    "for",
    "while",
    "yield",
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
]


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    text = root / "text"
    text.mkdir()
    rng = random.Random(0)
    for i in range(12):
        lines = [" " * rng.choice([0, 4]) + " ".join(rng.choices(WORDS, k=8)) for _ in range(80)]
        (text / f"f{i}.py").write_text("\n".join(lines) + "\n")
    res = _invoke("data", "prepare", "--text", text, "--tokenizer", "bpe:320", "--out",
                  root / "shards", "--val-fraction", "0.2")  # fmt: skip
    assert res.exit_code == 0, res.output
    return root / "shards"


def _train_args(shards, out, steps=6):
    return ["lm", "train", "--data", str(shards), "--steps", str(steps), "--batch", "2",
            "--context", "32", "--chunk", "8", "--window", "8", "--warmup", "1",
            "--ckpt-every", "1", "--out", str(out)]  # fmt: skip


def test_train_eval_generate_export_on_token_shards(prepared, tmp_path):
    out = tmp_path / "run"
    res = _invoke(*_train_args(prepared, out))
    assert res.exit_code == 0, res.output
    ck = out / "checkpoint"
    manifest = json.loads((prepared / "manifest.json").read_text())
    vocab = int(manifest["tokenizer"]["vocab_size"])
    model = load_lm(ck)
    assert model.config.vocab_size == vocab  # the model's vocabulary follows the manifest
    tok = load_run_tokenizer(ck)
    assert tok.vocab_size == vocab and tok.name.startswith("bpe")
    res = _invoke("lm", "eval", "--checkpoint", ck, "--data", prepared, "--context", 32,
                  "--batches", 2)  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = json.loads((out / "eval.json").read_text())
    assert ev["bpb"] == pytest.approx(ev["bits_per_token"] / manifest["splits"]["val"]["bytes"]
                                      * manifest["splits"]["val"]["tokens"])  # fmt: skip
    res = _invoke("lm", "generate", "--checkpoint", ck, "--prompt", "def return",
                  "--max-new-tokens", 5, "--temperature", 0)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("def return")
    # Hugging Face folder: tokenizer and model work together
    res = _invoke("lm", "export", "--checkpoint", ck, "--out", tmp_path / "hf", "--hf")
    assert res.exit_code == 0, res.output
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import batchcraft.models.lact_hf  # noqa: F401  (registers the Auto classes)

    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = hf_tok("def return class", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode("def return class")
    torch.testing.assert_close(hf_model(ids).logits, model(ids).logits)


def test_token_shard_training_resumes_exactly_after_kill(prepared, tmp_path):
    import os
    import subprocess
    import sys

    ref, out = tmp_path / "ref", tmp_path / "k"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}  # as the killed run has
    cmd = [sys.executable, "-m", "batchcraft.cli.main", *_train_args(prepared, ref, steps=10)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]

    def step(m):
        return int(json.loads(m.read_text())["step"])

    run_killed_then_resumed(
        _train_args(prepared, out, steps=10), out / "checkpoint" / "manifest.json",
        reached=lambda m: step(m) >= 3, seed=2,
    )  # fmt: skip
    a, b = load_lm(ref / "checkpoint").state_dict(), load_lm(out / "checkpoint").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_shard_errors_are_one_line(prepared, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    shard = next(broken.glob("**/*.bin"))
    shard.write_bytes(shard.read_bytes()[:10])  # truncated
    res = _invoke(*_train_args(broken, tmp_path / "r"))
    assert_one_line_error(res)
    # a byte-level model evaluated on BPE shards: the vocabularies differ
    res = _invoke("lm", "train", "--steps", 1, "--batch", 2, "--context", 16, "--out",
                  tmp_path / "bytes", "--max-bytes", 20000)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = _invoke("lm", "eval", "--checkpoint", tmp_path / "bytes" / "checkpoint", "--data",
                  prepared, "--context", 16)  # fmt: skip
    assert res.exit_code == 2 and "vocabulary" in res.output, res.output
