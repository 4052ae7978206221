"""Hugging Face wrapper: generate() == native greedy generate (skipped without transformers)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from batchcraft.models.lact_config import lact_tiny
from batchcraft.models.lact_hf import LaCTHFConfig, LaCTHFForCausalLM


def test_hf_generate_equals_native_and_round_trips(tmp_path):
    cfg = lact_tiny(hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8,
                    low_rank=4, mlp_hidden=96, use_muon=True)  # fmt: skip
    torch.manual_seed(0)
    hf = LaCTHFForCausalLM(LaCTHFConfig(**cfg.to_dict())).eval()
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
