"""LM recipe: seeding, exact and guarded resume, evaluation, checkpoints, the `lm` commands."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

from batchcraft.cli.main import app
from batchcraft.data.text import ByteBatches, ByteCorpus
from batchcraft.models.lact_config import lact_tiny
from batchcraft.recipes import ResumeError
from batchcraft.recipes.lm import (
    LMTrainSettings,
    build_lm,
    evaluate,
    load_lm,
    load_lm_checkpoint,
    save_lm_checkpoint,
    train_lm,
)
from batchcraft.utils.io import CheckpointError

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead on a loaded 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _corpus(n=4000, seed=0) -> ByteCorpus:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(97, 123, (n,), generator=g, dtype=torch.uint8)
    return ByteCorpus(data=data, doc_starts=torch.tensor([0]), files=[])


def _cfg(**kw):
    base = dict(hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8,
                low_rank=4, mlp_hidden=96, use_muon=True)  # fmt: skip
    return lact_tiny(**{**base, **kw})


def _batches(seed=3):
    return ByteBatches(_corpus(), batch_size=2, context=24, seed=seed)


def _losses(res):
    return [h["loss"] for h in res["history"]]


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seed_decides_initial_weights_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = build_lm(_cfg(), seed=5), build_lm(_cfg(), seed=5), build_lm(_cfg(), seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a, b) and not _same_weights(a, c)


def test_resume_is_bit_identical(tmp_path):
    s = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1, ckpt_every=0)
    a = build_lm(_cfg(), seed=0)
    ra = train_lm(a, _batches(), s, out_dir=tmp_path / "a")
    b = build_lm(_cfg(), seed=0)
    train_lm(b, _batches(), s, out_dir=tmp_path / "b", stop_after=2)  # "interrupted"
    b2 = build_lm(_cfg(), seed=123)  # a fresh process: other init, replaced by the checkpoint
    rb = train_lm(b2, _batches(), s, out_dir=tmp_path / "b", resume=True)
    assert rb["step"] == 4 and _losses(rb) == _losses(ra)
    assert _same_weights(a, b2)
    loaded, state = load_lm_checkpoint(tmp_path / "b" / "checkpoint")
    assert state["step"] == 4 and state["optimizer"] is not None
    assert _same_weights(loaded, b2)


def test_changed_algorithm_setting_is_refused_with_a_diff(tmp_path):
    s = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1)
    train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path, stop_after=2)
    with pytest.raises(ResumeError, match=r"lr: 0\.001 -> 0\.002"):
        s2 = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1, lr=2e-3)
        train_lm(build_lm(_cfg(), 0), _batches(), s2, out_dir=tmp_path, resume=True)
    with pytest.raises(ResumeError, match=r"model\.use_muon: True -> False"):
        train_lm(build_lm(_cfg(use_muon=False), 0), _batches(), s, out_dir=tmp_path, resume=True)
    # free settings may change; --allow-change overrides the guard
    s3 = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1, eval_every=3, ckpt_every=1)
    res = train_lm(build_lm(_cfg(), 0), _batches(), s3, out_dir=tmp_path, resume=True)
    assert res["step"] == 4


def test_allow_change_resumes_and_records_the_diff(tmp_path):
    s = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1)
    train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path, stop_after=2)
    s2 = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1, lr=2e-3)
    res = train_lm(
        build_lm(_cfg(), 0), _batches(), s2, out_dir=tmp_path, resume=True, allow_change=True
    )
    assert res["step"] == 4
    from batchcraft.utils.io import load_json

    manifest = load_json(tmp_path / "checkpoint" / "manifest.json")
    assert any(c.startswith("train.lr:") for c in manifest["changes"])


def test_extending_steps_is_exact_with_wsd_and_refused_with_cosine(tmp_path):
    def settings(steps, kind):
        return LMTrainSettings(steps=steps, batch_size=2, context=24, warmup=1, schedule=kind)

    # cosine: the lr of every post-warm-up step depends on the total -> refused
    train_lm(build_lm(_cfg(), 0), _batches(), settings(3, "cosine"), out_dir=tmp_path / "c")
    with pytest.raises(ResumeError, match=r"steps: 3 -> 6.*lr schedule"):
        train_lm(build_lm(_cfg(), 0), _batches(), settings(6, "cosine"), out_dir=tmp_path / "c",
                 resume=True)  # fmt: skip
    # wsd: before the decay starts the schedule does not depend on the total -> exact
    short = settings(4, "wsd")  # decay starts at step 3 of 4; stop at 2
    train_lm(build_lm(_cfg(), 0), _batches(), short, out_dir=tmp_path / "w", stop_after=2)
    ext = train_lm(build_lm(_cfg(), 0), _batches(), settings(8, "wsd"), out_dir=tmp_path / "w",
                   resume=True)  # fmt: skip
    fresh = train_lm(build_lm(_cfg(), 0), _batches(), settings(8, "wsd"))
    assert _losses(ext) == _losses(fresh)


def test_kill_between_the_renames_resumes_from_the_old_copy(tmp_path):
    s = LMTrainSettings(steps=4, batch_size=2, context=24, warmup=1, ckpt_every=1)
    ref = train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path / "ref")
    train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path / "r", stop_after=2)
    ck = tmp_path / "r" / "checkpoint"
    ck.rename(ck.with_name(".checkpoint.old"))  # the state between the two renames
    res = train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path / "r", resume=True)
    assert _losses(res) == _losses(ref)
    assert ck.is_dir() and not ck.with_name(".checkpoint.old").exists()


def test_damaged_checkpoints_give_one_clear_error(tmp_path):
    s = LMTrainSettings(steps=2, batch_size=2, context=24, warmup=1)
    train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path)
    ck = tmp_path / "checkpoint"
    shard = next((ck / "state").glob("*.safetensors"))
    good = shard.read_bytes()
    shard.write_bytes(good[:100])  # truncated
    with pytest.raises(CheckpointError):
        load_lm(ck)
    with pytest.raises(CheckpointError, match="incomplete or damaged"):
        train_lm(build_lm(_cfg(), 0), _batches(), s, out_dir=tmp_path, resume=True)
    shard.write_bytes(good)
    # weights of another configuration
    save_lm_checkpoint(tmp_path / "other", build_lm(_cfg(hidden_size=32, mlp_hidden=64), 0))
    shutil.copy(ck / "config.json", tmp_path / "other" / "config.json")
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_lm(tmp_path / "other")


def test_pickled_train_state_is_never_loaded(tmp_path):
    """A crafted pickle in a checkpoint folder must not run: we only read safetensors/JSON."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    save_lm_checkpoint(tmp_path / "ck", build_lm(_cfg(), 0), step=1)
    assert load_lm(tmp_path / "ck") is not None
    (tmp_path / "ck" / "train_state.safetensors").unlink()
    (tmp_path / "ck" / "manifest.json").unlink()  # as an older batchcraft wrote it
    torch.save({"x": Payload()}, tmp_path / "ck" / "train_state.pt")
    with pytest.raises(CheckpointError, match="never loaded"):
        load_lm_checkpoint(tmp_path / "ck")
    import pickle

    (tmp_path / "ck" / "train_state.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_lm_checkpoint(tmp_path / "ck")
    assert not marker.exists()


def test_evaluate_reports_bits_per_byte_and_positions():
    model = build_lm(_cfg(), 0)
    val = ByteBatches(_corpus(seed=1), batch_size=3, context=16)
    res = evaluate(model, val.sequential(2))
    assert res["tokens"] == 2 * 3 * 16 and len(res["per_position"]) == 16
    assert math.isclose(res["bpb"], res["loss"] / math.log(2))
    assert abs(sum(res["per_position"]) / 16 - res["loss"]) < 1e-5
    assert abs(res["loss"] - math.log(256)) < 0.5  # untrained: near uniform
    half = evaluate(model, val.sequential(2), bytes_per_token=2.0)
    assert math.isclose(half["bpb"], res["bpb"] / 2)


def test_evaluate_ignores_unscored_targets():
    from batchcraft.recipes.lm import LMBatch

    model = build_lm(_cfg(), 0)
    x = torch.randint(97, 123, (2, 17), generator=torch.Generator().manual_seed(1))
    full = evaluate(model, [x])
    tgt = x[:, 1:].clone()
    tgt[:, :8] = -100  # score only the second half
    part = evaluate(model, [LMBatch(x[:, :-1], tgt)])
    assert part["tokens"] == 2 * 8
    assert part["per_position"][8:] == pytest.approx(full["per_position"][8:])
    assert all(math.isnan(v) for v in part["per_position"][:8])


def test_settings_are_validated_once():
    for bad in (dict(steps=0), dict(lr=float("nan")), dict(lr=-1.0), dict(batch_size=0),
                dict(optimizer="nope"), dict(schedule="linear"), dict(grad_clip=float("inf"))):  # fmt: skip
        with pytest.raises(ValueError):
            LMTrainSettings(**bad)


# ----------------------------------------------------------------------------- the CLI
def _text_dir(tmp_path, n=100):
    text = tmp_path / "corpus"
    text.mkdir()
    for i in range(n):  # ~5% of files go to validation by hash
        (text / f"f{i}.py").write_text("def f(x):\n    return x + 1\n" * 20)
    return text


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_train_eval_generate(tmp_path):
    text, out = _text_dir(tmp_path), tmp_path / "run"
    res = _invoke("lm", "train", "--text", text, "--steps", 3, "--batch", 2, "--context", 32,
                  "--out", out, "--warmup", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (out / "checkpoint" / "config.json").is_file() and (
        out / "checkpoint" / "state"
    ).is_dir()
    res = _invoke("lm", "eval", "--checkpoint", out / "checkpoint", "--text", text,
                  "--context", 32, "--batches", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output and (out / "per_position.csv").is_file()
    assert (out / "per_position.png").is_file()
    res = _invoke("lm", "generate", "--checkpoint", out / "checkpoint", "--prompt", "def",
                  "--max-new-tokens", 5)  # fmt: skip
    assert res.exit_code == 0 and res.stdout.startswith("def")
    res = _invoke("lm", "export", "--checkpoint", out / "checkpoint", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "model.safetensors").is_file()
    assert _same_weights(load_lm(tmp_path / "exp"), load_lm(out / "checkpoint"))
    res = _invoke("lm", "export", "--checkpoint", out / "checkpoint", "--out", tmp_path / "hf",
                  "--hf")  # fmt: skip
    assert res.exit_code == 0, res.output
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import batchcraft.models.lact_hf  # noqa: F401  (registers the Auto classes)

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([[100, 101, 102, 103]])
    ref = load_lm(out / "checkpoint")(ids).logits
    torch.testing.assert_close(hf(ids).logits, ref)


def test_cli_same_seed_same_run_and_seed_changes_init(tmp_path):
    text = _text_dir(tmp_path, 30)
    hist = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        res = _invoke("lm", "train", "--text", text, "--steps", 2, "--batch", 2, "--context", 16,
                      "--out", tmp_path / name, "--warmup", 1, "--seed", seed)  # fmt: skip
        assert res.exit_code == 0, res.output
        from batchcraft.utils.io import load_json

        hist.append([h["loss"] for h in load_json(tmp_path / name / "history.json")["history"]])
    assert hist[0] == hist[1] and hist[0][0] != hist[2][0]


def test_cli_one_text_file_is_split_inside(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    res = _invoke("lm", "train", "--text", f, "--steps", 2, "--batch", 2, "--context", 16,
                  "--out", tmp_path / "r", "--warmup", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    two = tmp_path / "val.txt"
    two.write_text("pack my box with five dozen liquor jugs. " * 10)
    res = _invoke("lm", "train", "--text", f, "--val-text", two, "--steps", 2, "--batch", 2,
                  "--context", 16, "--out", tmp_path / "r2", "--warmup", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    res = _invoke("lm", "eval", "--checkpoint", tmp_path / "r" / "checkpoint", "--text", f,
                  "--context", 16, "--batches", 1)  # fmt: skip
    assert res.exit_code == 0, res.output


def test_load_text_splits_rules(tmp_path):
    from batchcraft.data.text import load_text_splits

    f = tmp_path / "one.txt"
    f.write_bytes(b"a" * 900 + b"b" * 100)
    tr, va = load_text_splits([f], val_fraction=0.1)
    assert bytes(tr.data[:-1].tolist()) == b"a" * 900  # the end of the file is validation
    assert bytes(va.data[:-1].tolist()) == b"b" * 100
    tr2, va2 = load_text_splits([f], val_text=[f])
    assert len(tr2) == len(va2) == 1001


def test_cli_resume_with_muon_is_refused(tmp_path):
    text = _text_dir(tmp_path, 30)
    base = ["lm", "train", "--text", text, "--steps", 4, "--batch", 2, "--context", 16,
            "--out", tmp_path / "r", "--warmup", 1, "--ckpt-every", 1]  # fmt: skip
    assert _invoke(*base).exit_code == 0
    res = _invoke(*base, "--muon")
    assert res.exit_code == 2 and "use_muon: False -> True" in res.output, res.output
    res = _invoke(*base, "--muon", "--allow-change")
    assert res.exit_code == 0, res.output


def test_atomic_files_get_the_usual_mode(tmp_path):
    import os

    from batchcraft.utils.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
