"""LaCT LM: decode == prefill, constant cache, causality, documents, training, presets."""

from __future__ import annotations

import pytest
import torch
from helpers import rel_rms

from batchcraft.models.lact_config import (
    LaCTConfig,
    get_preset,
    lact_3b,
    lact_760m,
    lact_small,
    lact_tiny,
)
from batchcraft.models.lact_lm import (
    LaCTForCausalLM,
    count_parameters,
    full_attention_baseline,
    swa_baseline,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (20x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(**kw) -> LaCTConfig:
    base = dict(
        vocab_size=64, hidden_size=64, num_heads=2, num_attn_heads=4, chunk_size=8,
        window_size=8, low_rank=4, mlp_hidden=96,
    )  # fmt: skip
    base.update(kw)
    return lact_tiny(**base)


def _model(cfg: LaCTConfig) -> LaCTForCausalLM:
    torch.manual_seed(0)
    m = LaCTForCausalLM(cfg).eval()
    with torch.no_grad():  # make the TTT branch matter (its gate starts near zero)
        for b in m.blocks:
            if b.mix.use_ttt:
                b.mix.gate_proj.bias.fill_(2.0)
                b.mix.lr_proj.bias.fill_(2.0)
    return m


def _ids(b=2, t=30, v=64, seed=0):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["lact_muon", "lact_momentum", "swa", "full"])
def test_decode_equals_prefill(kind):
    cfg = {
        "lact_muon": _cfg(use_muon=True),
        "lact_momentum": _cfg(),
        "swa": swa_baseline(_cfg(), match_params=False),
        "full": full_attention_baseline(_cfg(), match_params=False),
    }[kind]
    model = _model(cfg)
    tol = 1e-5  # fp32 (spec 9)
    if kind == "lact_muon":  # Newton-Schulz amplifies fp32 rounding of the chunk inputs
        model, tol = model.double(), 1e-10
    ids = _ids()
    with torch.no_grad():
        full = model(ids).logits
        for split in (1, 8, 13):
            out = model(ids[:, :split], use_cache=True)
            logits, cache = [out.logits], out.cache
            for t in range(split, ids.shape[1]):
                out = model(ids[:, t : t + 1], cache=cache)
                logits.append(out.logits)
                cache = out.cache
            got = torch.cat(logits, 1)
            assert rel_rms(full, got) < tol, (split, rel_rms(full, got))


def test_generate_greedy_matches_full_forward_argmax():
    model = _model(_cfg(use_muon=True))
    prompt = _ids(t=5)
    out = model.generate(prompt, max_new_tokens=20)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        logits = model(out).logits
    torch.testing.assert_close(logits[:, 4:-1].argmax(-1), out[:, 5:], rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    s1 = model.generate(prompt, 6, temperature=1.0, generator=g, top_k=5)
    s2 = model.generate(
        prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(1), top_k=5
    )
    assert torch.equal(s1, s2)


def test_cache_size_constant_for_lact_and_growing_for_full_attention():
    model = _model(_cfg())
    with torch.no_grad():
        c3 = model(_ids(b=1, t=24), use_cache=True).cache  # 3C
        c6 = model(_ids(b=1, t=48), use_cache=True).cache  # 6C
    assert c3 is not None and c6 is not None
    assert c3.shapes() == c6.shapes() and c3.nbytes() == c6.nbytes()
    full = _model(full_attention_baseline(_cfg(), match_params=False))
    with torch.no_grad():
        f3 = full(_ids(b=1, t=24), use_cache=True).cache
        f6 = full(_ids(b=1, t=48), use_cache=True).cache
    assert f3 is not None and f6 is not None and f6.nbytes() == 2 * f3.nbytes()


def test_model_causality():
    model = _model(_cfg(use_muon=True))
    ids = _ids(b=1, t=26)
    with torch.no_grad():
        base = model(ids).logits
        for t in (0, 9, 20):
            ids2 = ids.clone()
            ids2[0, t] = (ids2[0, t] + 1) % 64
            out = model(ids2).logits
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert (out[:, t] - base[:, t]).abs().max() > 1e-4


def test_documents_are_isolated_with_cu_seqlens():
    model = _model(_cfg())
    ids = _ids(b=1, t=30)
    cu = torch.tensor([0, 11, 30])
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu).logits
        a = model(ids[:, :11]).logits
        b = model(ids[:, 11:]).logits
    torch.testing.assert_close(packed, torch.cat([a, b], 1), rtol=1e-5, atol=1e-5)
    out = model(ids, labels=ids, cu_seqlens=cu)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_right_padding_loss_ignores_pads():
    model = _model(_cfg())
    ids = _ids(b=2, t=20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 12:] = 0
    with torch.no_grad():
        out = model(ids, labels=ids, attention_mask=mask)
        short = model(ids[1:, :12]).logits
    torch.testing.assert_close(out.logits[1:, :12], short, rtol=1e-5, atol=1e-5)
    assert out.loss is not None and torch.isfinite(out.loss)


def test_tiny_loss_decreases_in_20_steps():
    torch.manual_seed(0)
    model = LaCTForCausalLM(lact_tiny(use_muon=True))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    # a learnable stream: repeated random motifs of length 8
    motif = torch.randint(0, 256, (4, 8), generator=g)
    ids = motif.repeat(1, 6)  # [4, 48]
    losses = []
    for _ in range(20):
        out = model(ids, labels=ids)
        assert out.loss is not None
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_preset_parameter_counts():
    n760 = count_parameters(lact_760m())
    assert abs(n760 - 797.6e6) / 797.6e6 < 0.002, n760
    n3b = count_parameters(lact_3b())
    assert abs(n3b - 2.98e9) / 2.98e9 < 0.01, n3b
    assert lact_760m().fast_state_numel == 24 * 3 * 4 * 384**2
    tiny = lact_tiny()
    for base in (swa_baseline(tiny), full_attention_baseline(tiny)):
        n, want = count_parameters(base), count_parameters(tiny)
        assert abs(n - want) / want < 0.005 and not base.use_ttt
    assert count_parameters(lact_small()) > count_parameters(tiny)
    assert get_preset("lact_small") == lact_small()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_attn_heads": 25, "hidden_size": 3072}, "num_attn_heads"),
        ({"num_heads": 3}, "num_heads"),
        ({"window_size": 8, "chunk_size": 16}, "exact causality"),
        ({"use_ttt": False, "window_size": 0}, "needs attention"),
        ({"muon": "x"}, "muon"),
        ({"mlp_hidden": 0}, "mlp_hidden"),
    ],
)
def test_bad_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        lact_tiny(**kw)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("lact_9b")


def test_config_round_trip():
    cfg = lact_tiny(use_muon=True, window_size=None)
    assert LaCTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        LaCTConfig.from_dict({"hidden": 3})
    # a config.json written before the op options became config fields still loads
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("inner_loss", "inner_steps", "check", "recompute", "muon_steps", "lr_dim",
                        "qkv_bias")}  # fmt: skip
    assert LaCTConfig.from_dict(old) == cfg


def test_config_options_reach_every_layer_and_the_op():
    """The blocks read the layer options from the config by name (no field copied by hand)."""
    from batchcraft.nn.lact import LaCTLayerOptions
    from batchcraft.ops.lact import LaCTOptions

    cfg = _cfg(use_muon=True, muon="classic", muon_steps=3, weight_norm="pre", qk_norm=True,
               qkv_bias=True, v_silu=False, rope_theta=1e4, init="full", fw_init_gain=0.3,
               output_gate=False, inter_multi=2, base_lr=3e-3, recompute=True, inner_steps=2,
               use_momentum=False, lact_impl="naive", attn_impl="naive")  # fmt: skip
    model = LaCTForCausalLM(cfg)
    for block in model.blocks:
        assert block.mix.options == LaCTLayerOptions.project(cfg)
        assert block.mix.lact_options == LaCTOptions.project(cfg)
    assert model.blocks[1].mix.layer_idx == 1


def test_ttt_linear_baseline_trains_and_refuses_cache():
    from batchcraft.models.lact_lm import ttt_linear_baseline

    cfg = ttt_linear_baseline(_cfg())
    assert abs(count_parameters(cfg) - count_parameters(_cfg())) / count_parameters(_cfg()) < 0.005
    model = LaCTForCausalLM(cfg)
    ids = _ids(t=20)
    out = model(ids, labels=ids)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.blocks[0].mix.w0.grad is not None
    with pytest.raises(ValueError, match="ttt_linear"):
        model(ids, use_cache=True)
    x2 = ids.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 64
    with torch.no_grad():
        a, b = model(ids).logits, model(x2).logits
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)  # causal


def test_config_module_does_not_import_the_model():
    """lact_config is plain data: the parameter-matched baselines that need the model live in
    lact_lm, so there is no import circle between the two modules."""
    import ast
    import inspect

    import batchcraft.models.lact_config as mod

    tree = ast.parse(inspect.getsource(mod))
    imported = {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module is not None
    } | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith("batchcraft.models") for m in imported), imported


# ----------------------------------------------------------- losses and inputs by hand
def _hand_loss(logits, ids, keep):
    """Mean over the pairs (t, t + 1) that ``keep(t)`` allows of -log p(ids[t + 1] | logits[t])."""
    terms = []
    b, t, _ = logits.shape
    for i in range(b):
        for j in range(t - 1):
            if keep(i, j):
                terms.append(-torch.log_softmax(logits[i, j].double(), -1)[ids[i, j + 1]])
    return torch.stack(terms).mean()


def test_loss_is_the_mean_next_token_nll_by_hand():
    model = _model(_cfg())
    ids = _ids(b=2, t=12)
    labels = ids.clone()
    labels[0, 5] = -100  # predicting position 5 of row 0 is ignored
    with torch.no_grad():
        out = model(ids, labels=labels)
    want = _hand_loss(out.logits, ids, lambda i, j: not (i == 0 and j + 1 == 5))
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)


def test_packed_document_loss_never_predicts_across_a_boundary():
    """Pairs (t, t + 1) are kept only inside a document: the last token of a document does not
    predict the first token of the next one (and the first one still predicts its successor)."""
    model = _model(_cfg())
    ids = _ids(b=1, t=20)
    cu = torch.tensor([0, 6, 7, 20])  # includes a one-token document
    doc = torch.bucketize(torch.arange(20), cu[1:], right=True)  # document of every position
    with torch.no_grad():
        out = model(ids, labels=ids, cu_seqlens=cu)
    want = _hand_loss(out.logits, ids, lambda i, j: bool(doc[j] == doc[j + 1]))
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)


def test_right_padded_loss_counts_only_real_pairs_by_hand():
    model = _model(_cfg())
    ids = _ids(b=2, t=14)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        out = model(ids, labels=ids, attention_mask=mask)
    want = _hand_loss(out.logits, ids, lambda i, j: bool(mask[i, j + 1]))
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)


def test_forward_is_the_pre_norm_residual_stack():
    """logits = lm_head(norm(x_L)), x_{l+1} = y + mlp(mlp_norm(y)), y = x_l + mix(mix_norm(x_l))."""
    model = _model(_cfg(use_muon=True))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # norm gains off 1 so a dropped or misplaced norm shows
        for m in model.modules():
            if isinstance(m, torch.nn.RMSNorm):
                m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))
    ids = _ids(b=2, t=19)
    with torch.no_grad():
        x = model.embed(ids)
        for blk in model.blocks:
            x = x + blk.mix(blk.mix_norm(x))[0]
            x = x + blk.mlp.down(
                torch.nn.functional.silu(blk.mlp_norm(x) @ blk.mlp.gate_up.weight[:96].T)
                * (blk.mlp_norm(x) @ blk.mlp.gate_up.weight[96:].T)
            )
        want = model.norm(x) @ model.lm_head.weight.T
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("ids", "exc", "match"),
    [
        (torch.tensor([[1, 64, 3]]), ValueError, r"input_ids must lie in \[0, vocab_size = 64\)"),
        (torch.tensor([[1, -1, 3]]), ValueError, r"got values in \[-1, 3\]"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "integer tensor"),
        (torch.tensor([1, 2, 3]), ValueError, r"\[B, T\]"),
    ],
    ids=["too-large", "negative", "float", "1d"],
)
def test_bad_token_ids_raise_a_clear_error(ids, exc, match):
    model = _model(_cfg())
    with pytest.raises(exc, match=match):
        model(ids)


def test_bad_labels_raise_a_clear_error():
    model = _model(_cfg())
    ids = _ids(b=1, t=6)
    with pytest.raises(ValueError, match="labels must lie in"):
        model(ids, labels=torch.full_like(ids, 64))
    with pytest.raises(ValueError, match="labels must have input_ids' shape"):
        model(ids, labels=ids[:, :4])
    out = model(ids, labels=torch.full_like(ids, -100).index_fill(1, torch.tensor([3]), 5))
    assert out.loss is not None and torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_generate_rejects_bad_sampling_options(kw, match):
    model = _model(_cfg())
    args = {"max_new_tokens": 2, "temperature": 1.0} | kw
    with pytest.raises(ValueError, match=match):
        model.generate(_ids(b=1, t=4), **args)


def test_top_k_samples_only_among_the_k_most_likely():
    model = _model(_cfg())
    prompt = _ids(b=1, t=5).repeat(300, 1)  # 300 draws of the first sampled token at once
    with torch.no_grad():
        last = model(prompt[:1]).logits[0, -1]
    top3 = set(last.topk(3).indices.tolist())
    draws = model.generate(prompt, 1, temperature=5.0, top_k=3,
                           generator=torch.Generator().manual_seed(0))[:, -1]  # fmt: skip
    assert set(draws.tolist()) <= top3 and len(set(draws.tolist())) > 1
    greedy = model.generate(prompt[:1], 1)[:, -1]
    one = model.generate(prompt[:4], 1, temperature=1.0, top_k=1,
                         generator=torch.Generator().manual_seed(0))[:, -1]  # fmt: skip
    assert torch.equal(one, greedy.expand(4))
