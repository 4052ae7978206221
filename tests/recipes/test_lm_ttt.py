"""LM recipe and `lm` commands: the recall task, the `--ttt off` ablation, fast-weight diagnostics."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from batchcraft.cli.main import app
from batchcraft.data.synthetic import RecallTask
from batchcraft.models.lact_config import lact_tiny
from batchcraft.recipes import ResumeError
from batchcraft.recipes.lm import (
    LMTrainSettings,
    RecallSource,
    build_lm,
    evaluate,
    format_diagnostics,
    load_lm,
    train_lm,
    with_ttt_updates,
)
from batchcraft.utils.io import load_json

runner = CliRunner()
TASK = RecallTask.for_window(window=4, num_layers=2, num_pairs=2, num_keys=8, num_values=8,
                             vocab_size=32)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw):
    return lact_tiny(vocab_size=32, hidden_size=32, num_heads=1, num_attn_heads=2, mlp_hidden=32,
                     chunk_size=4, window_size=4, **kw)  # fmt: skip


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_recall_source_scores_only_the_answers_one_token_early():
    src = RecallSource(TASK, 3, seed=0)
    b = src.get(0)
    ids, _ = TASK.batches(3, seed=0).get(0)
    assert src.context == b.inputs.shape[1] == TASK.length - 1
    torch.testing.assert_close(b.inputs, ids[:, :-1])
    scored = (b.targets != -100).nonzero()[:, 1].unique()
    torch.testing.assert_close(scored, TASK.answer_positions() - 1)  # predicted by the query
    assert torch.equal(b.targets[:, scored], ids[:, scored + 1])


def test_evaluate_accuracy_counts_argmax_hits_of_scored_targets():
    model = build_lm(_cfg(), seed=0)
    batches = list(RecallSource(TASK, 4, seed=1).sequential(2))
    res = evaluate(model, batches)
    hits = n = 0
    for b in batches:
        pred = model(b.inputs).logits.argmax(-1)
        mask = b.targets != -100
        hits += int((pred[mask] == b.targets[mask]).sum())
        n += int(mask.sum())
    assert res["tokens"] == n == 2 * 4 * TASK.queries
    assert res["accuracy"] == hits / n
    assert "ttt" not in res


def test_with_ttt_updates_off_keeps_the_parameters_and_freezes_the_fast_weights():
    on = build_lm(_cfg(), seed=0)
    state = torch.get_rng_state()
    off = with_ttt_updates(on, False)
    assert torch.equal(torch.get_rng_state(), state)  # the rebuild drew nothing from it
    assert off.config.ttt_updates is False and with_ttt_updates(on, True) is on
    sa, sb = on.state_dict(), off.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ref = build_lm(_cfg(ttt_updates=False), seed=0)  # the same seed: the same parameters
    ids = TASK.sample(2, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(off(ids).logits, ref(ids).logits, rtol=0, atol=0)
    assert (off(ids).logits - on(ids).logits).abs().max() > 1e-4  # updates matter when on
    d_on = evaluate(on, [RecallSource(TASK, 2).get(0)], diagnostics=True)["ttt"]
    d_off = evaluate(off, [RecallSource(TASK, 2).get(0)], diagnostics=True)["ttt"]
    assert [d["layer"] for d in d_on] == [0.0, 1.0]
    assert all(d["drift"] > 1e-3 and d["update_norm"] > 1e-3 for d in d_on), d_on
    assert all(d["drift"] == 0 and d["update_norm"] == 0 for d in d_off), d_off
    assert format_diagnostics(d_on).startswith("layer 0 drift ")


def test_diagnostics_of_a_model_without_fast_weights_are_empty():
    from batchcraft.models.lact_lm import swa_baseline

    model = build_lm(swa_baseline(_cfg()), seed=0)
    assert evaluate(model, [RecallSource(TASK, 2).get(0)], diagnostics=True)["ttt"] == []


def test_train_lm_records_diagnostics_at_eval_points():
    s = LMTrainSettings(steps=4, batch_size=4, context=TASK.length - 1, warmup=1, eval_every=2,
                        eval_batches=1, task="recall")  # fmt: skip
    seen = []
    res = train_lm(build_lm(_cfg(), seed=0), RecallSource(TASK, 4), s,
                   val=RecallSource(TASK, 4, seed=9), on_eval=lambda i, ev: seen.append(i))  # fmt: skip
    assert seen == [2, 4]  # one periodic evaluation, then the final one (not run twice)
    evals = [h for h in res["history"] if "val" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for h in evals:
        assert [d["layer"] for d in h["ttt"]] == [0.0, 1.0]
        assert set(h["ttt"][0]) == {"layer", "drift", "update_norm", "output_change"}
        assert 0.0 <= h["val_accuracy"] <= 1.0
    assert res["final_eval"]["ttt"][1]["drift"] == evals[-1]["ttt"][1]["drift"]
    assert res["final_eval"]["loss"] == evals[-1]["val"]


def test_final_evaluation_lands_in_the_last_history_entry_and_the_checkpoint(tmp_path):
    from batchcraft.utils.io import load_checkpoint

    s = LMTrainSettings(steps=3, batch_size=4, context=TASK.length - 1, warmup=1, eval_every=2,
                        eval_batches=1, task="recall")  # fmt: skip
    seen = []
    res = train_lm(build_lm(_cfg(), seed=0), RecallSource(TASK, 4), s, out_dir=tmp_path,
                   val=RecallSource(TASK, 4, seed=9), on_eval=lambda i, ev: seen.append(i))  # fmt: skip
    assert seen == [2, 3]
    assert [h["step"] for h in res["history"] if "val" in h] == [2, 3]
    saved = load_checkpoint(tmp_path / "checkpoint" / "train_state.safetensors")
    assert saved["history"][-1]["val"] == res["final_eval"]["loss"]


def test_settings_task_is_validated():
    with pytest.raises(ValueError, match="task must be one of"):
        LMTrainSettings(task="copy")


def test_cli_recall_train_prints_chance_and_diagnostics_and_eval_ttt_off(tmp_path):
    out = tmp_path / "r"
    res = _invoke("lm", "train", "--task", "recall", "--pairs", 2, "--steps", 2, "--batch", 4,
                  "--warmup", 1, "--eval-batches", 1, "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "chance accuracy 0.0156 (1/64)" in text and "answer accuracy" in text
    assert "fast weights: layer 0 drift" in text and "layer 1 drift" in text
    run = load_json(out / "history.json")
    assert run["settings"]["train"]["task"] == "recall"
    assert run["settings"]["data"]["num_pairs"] == 2
    assert run["settings"]["train"]["context"] == 2 * 2 + 2 * 15 + 2 * 2 - 1  # W 16, 2 layers
    res = _invoke("lm", "eval", "--checkpoint", out / "checkpoint", "--task", "recall",
                  "--pairs", 2, "--batch", 4, "--batches", 1, "--ttt", "off")  # fmt: skip
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "(updates off): layer 0 drift 0.00% update 0.00%" in text
    ev = load_json(out / "eval.json")
    assert ev["tokens"] == 4 * 2 and all(d["drift"] == 0 for d in ev["ttt"])
    res = _invoke("lm", "eval", "--checkpoint", out / "checkpoint", "--task", "recall",
                  "--pairs", 2, "--batch", 4, "--batches", 1)  # fmt: skip
    assert res.exit_code == 0 and load_json(out / "eval.json")["ttt"][0]["drift"] > 0


def test_cli_ttt_off_trains_the_ablation_and_resume_guards_ttt_and_task(tmp_path):
    out = tmp_path / "r"
    base = ["lm", "train", "--task", "recall", "--pairs", 2, "--steps", 2, "--batch", 2,
            "--warmup", 1, "--eval-batches", 1, "--out", out, "--window", 4, "--chunk", 4]  # fmt: skip
    res = _invoke(*base, "--ttt", "off", "--inner-lr", 8)
    assert res.exit_code == 0, res.output
    cfg = load_lm(out / "checkpoint").config
    assert cfg.ttt_updates is False and cfg.inner_lr == 8.0
    assert "layer 0 drift 0.00% update 0.00%" in " ".join(res.output.split())
    res = _invoke(*base, "--steps", 3, "--inner-lr", 8, "--schedule", "constant")
    assert res.exit_code == 2 and "model.ttt_updates: False -> True" in res.output, res.output
    res = _invoke(*[a if a != "recall" else "text" for a in base], "--ttt", "off",
                  "--inner-lr", 8, "--context", 16)  # fmt: skip
    assert res.exit_code == 2 and "train.task: 'recall' -> 'text'" in res.output, res.output
    s = LMTrainSettings(steps=2, batch_size=2, context=TASK.length - 1, task="text")
    train_lm(build_lm(_cfg(), 0), RecallSource(TASK, 2), s, out_dir=tmp_path / "p")
    s2 = LMTrainSettings(steps=2, batch_size=2, context=TASK.length - 1, task="recall")
    with pytest.raises(ResumeError, match=r"train\.task: 'text' -> 'recall'"):  # the Python API
        train_lm(build_lm(_cfg(), 0), RecallSource(TASK, 2), s2, out_dir=tmp_path / "p",
                 resume=True)  # fmt: skip
