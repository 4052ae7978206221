"""Hugging Face wrapper: generate() == native greedy generate, left padding, Auto classes, export
(skipped without transformers)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM

from batchcraft.models.lact_config import lact_tiny
from batchcraft.models.lact_hf import LaCTHFConfig, LaCTHFForCausalLM, export_hf, save_hf
from batchcraft.utils.io import CheckpointError


def _cfg(**kw):
    base = dict(hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8,
                low_rank=4, mlp_hidden=96, use_muon=True)  # fmt: skip
    return lact_tiny(**(base | kw))


def _hf(**kw) -> LaCTHFForCausalLM:
    torch.manual_seed(0)
    hf = LaCTHFForCausalLM(LaCTHFConfig(**_cfg(**kw).to_dict())).eval()
    with torch.no_grad():  # make the TTT branch matter (its gate starts near zero)
        for b in hf.lact.blocks:
            b.mix.gate_proj.bias.fill_(2.0)
            b.mix.lr_proj.bias.fill_(2.0)
    return hf


def test_hf_generate_equals_native_and_round_trips(tmp_path):
    cfg = _cfg()
    hf = _hf()
    assert hf.config.to_lact() == cfg
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    native = hf.lact.generate(ids, max_new_tokens=13)
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=13, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip
    assert torch.equal(out, native)
    loss = hf(ids, labels=ids).loss
    assert loss is not None and torch.isfinite(loss)
    hf.save_pretrained(tmp_path)
    again = LaCTHFForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(again.lact.generate(ids, max_new_tokens=4), hf.lact.generate(ids, 4))
    with pytest.raises(ValueError, match="num_attn_heads"):
        LaCTHFConfig(hidden_size=3072, num_attn_heads=25)


def test_left_padded_prompt_continues_like_the_unpadded_prompt():
    hf = _hf()
    g = torch.Generator().manual_seed(2)
    long, short = (
        torch.randint(1, 256, (1, 11), generator=g),
        torch.randint(1, 256, (1, 5), generator=g),
    )
    padded = torch.cat([long, torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1)])
    mask = (padded != 0).long()
    mask[0] = 1
    kw = dict(do_sample=False, pad_token_id=0)
    out = hf.generate(padded, attention_mask=mask, max_new_tokens=9, **kw)
    assert out.shape == (2, 20) and torch.equal(out[:, :11], padded)
    assert torch.equal(out[0:1], hf.generate(long, max_new_tokens=9, **kw))
    assert torch.equal(out[1:2, 6:], hf.generate(short, max_new_tokens=9, **kw))
    assert torch.equal(out[1:2, 6:], hf.lact.generate(short, max_new_tokens=9))  # native too
    # max_length counts the padded prompt, as in a batched call: 4 new tokens for every row
    assert hf.generate(padded, attention_mask=mask, max_length=15, **kw).shape == (2, 15)
    with pytest.raises(ValueError, match="left padding"):
        hf.generate(padded, attention_mask=mask.flip(1), max_new_tokens=2, **kw)


def test_auto_classes_load_a_saved_folder_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = _hf()
    hf.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LaCTHFConfig)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, LaCTHFForCausalLM)
    for (n, a), (_, b) in zip(auto.state_dict().items(), hf.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    assert torch.equal(auto.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0),
                       hf.lact.generate(ids, 5))  # fmt: skip


def test_export_an_lm_train_checkpoint(tmp_path, monkeypatch):
    from batchcraft.recipes.lm import export_lm, load_lm, save_lm_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _hf().lact
    ckpt = save_lm_checkpoint(tmp_path / "run" / "checkpoint", model, None, step=3)  # sharded
    with pytest.raises(CheckpointError, match="lm export"):
        export_hf(ckpt, tmp_path / "hf0")
    single = export_lm(ckpt, tmp_path / "export")  # config.json + model.safetensors
    out = export_hf(single, tmp_path / "hf")
    auto = AutoModelForCausalLM.from_pretrained(out).eval()
    assert auto.config.to_lact() == model.config
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(auto(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not empty"):
        export_hf(single, out)
    export_hf(single, out, overwrite=True)
    # a sharded checkpoint through the recipe's loader
    direct = save_hf(load_lm(ckpt), tmp_path / "hf_direct")
    torch.testing.assert_close(
        AutoModelForCausalLM.from_pretrained(direct)(ids).logits, model(ids).logits, rtol=0, atol=0
    )
    with pytest.raises(CheckpointError, match="not a LaCT checkpoint folder"):
        export_hf(tmp_path / "nowhere", tmp_path / "hf2")
    # weights that do not fit the config: one clear error naming the file
    (single / "config.json").write_text(
        (single / "config.json").read_text().replace('"num_layers": 2', '"num_layers": 3')
    )
    with pytest.raises(CheckpointError, match="does not fit this model"):
        export_hf(single, tmp_path / "hf3")
