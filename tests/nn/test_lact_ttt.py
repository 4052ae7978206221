"""Test-time training of LaCTLayer: the inner-lr parameterisation, updates off, diagnostics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from batchcraft.models import LaCTForCausalLM, swa_baseline
from batchcraft.models.lact_config import LaCTConfig, lact_3b, lact_760m, lact_small, lact_tiny
from batchcraft.nn.lact import LaCTLayer, inv_softplus, token_lr
from batchcraft.nn.rope import rope_tables
from batchcraft.ops.lact import FastWeights, swiglu_apply

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _layer(**kw) -> LaCTLayer:
    args = dict(num_heads=2, num_attn_heads=4, chunk_size=4, window_size=0, low_rank=4)
    args.update(kw)
    torch.manual_seed(0)
    layer = LaCTLayer(32, **args).to(D64)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off the structured init, so the lr projection is not zero
        for p in layer.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _like(layer: LaCTLayer, **changes) -> LaCTLayer:
    """The same parameters under changed options."""
    other = LaCTLayer(options=dataclasses.replace(layer.options, **changes)).to(D64)
    other.load_state_dict(layer.state_dict())
    return other


def _x(b=2, t=12, seed=1):
    return torch.randn(b, t, 32, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ------------------------------------------------------------------ the inner lr
def test_token_lr_paper_setting_and_chunk_mean_scale():
    a = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=D64)
    paper = _layer(base_lr=1e-3).options
    torch.testing.assert_close(token_lr(a, paper), F.softplus(a + inv_softplus(1e-3)))
    opts = dataclasses.replace(paper, inner_lr=2.0, chunk_size=8)
    lr = token_lr(a, opts)
    torch.testing.assert_close(lr, F.softplus(a + inv_softplus(1e-3)) * 2.0 / (8 * 1e-3))
    # at init (a = 0) every token gets eta / C, so the chunk's weights sum to eta
    zero = token_lr(torch.zeros(8, dtype=D64), opts)
    torch.testing.assert_close(zero.sum(), torch.tensor(2.0, dtype=D64), rtol=1e-12, atol=0)
    # the projection still scales a token's lr multiplicatively (about exp(a) for a small base_lr)
    ratio = token_lr(torch.tensor([-2.0, 0.0], dtype=D64), opts)
    assert ratio[0] / ratio[1] == pytest.approx(math.exp(-2.0), rel=2e-3)


def _one_update(layer: LaCTLayer, x: torch.Tensor) -> FastWeights:
    """``W_1 - W_0`` after the single update of a sequence of exactly one chunk."""
    assert x.shape[1] == layer.options.chunk_size
    _, cache = layer(x, use_cache=True)
    w0 = layer.initial_weights()
    return FastWeights(*[w - w0i for w, w0i in zip(cache.ttt.weights, w0, strict=True)])


@pytest.mark.parametrize("r", [2, 5])
def test_chunk_mean_update_does_not_depend_on_chunk_size(r):
    """Replicating a chunk's tokens r times under chunk size r*C leaves the update unchanged
    (the inner loss is a mean over the chunk); the paper's summed lr multiplies it by r."""
    x = _x(t=4)
    xr = x.repeat(1, r, 1)  # the same tokens, r times (positions do not matter without RoPE)
    for inner_lr, scale in ((3.0, 1.0), (None, float(r))):
        base = _layer(use_rope=False, use_momentum=False, weight_norm=None, inner_lr=inner_lr)
        d1 = _one_update(base, x)
        dr = _one_update(_like(base, chunk_size=4 * r), xr)
        for a, b in zip(d1, dr, strict=True):
            torch.testing.assert_close(b, scale * a, rtol=1e-10, atol=1e-12)
            assert a.abs().max() > 1e-6


def test_chunk_mean_update_with_weight_norm_and_momentum_is_chunk_size_free():
    """The same with the LM defaults (post-norm, momentum): the weights after the update match."""
    base = _layer(use_rope=False, inner_lr=3.0)
    x = _x(t=4)
    _, c1 = base(x, use_cache=True)
    _, c3 = _like(base, chunk_size=12)(x.repeat(1, 3, 1), use_cache=True)
    for a, b in zip(c1.ttt.weights, c3.ttt.weights, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def _raw_step_norms(inner_lr: float | None, chunks=(4, 16, 64)) -> list[float]:
    """Mean relative size of the raw inner step ``||Delta_j|| / ||W_j||`` over the updates of
    the same 256 independent random tokens, at each chunk size (plain GD, no weight norm)."""
    x = _x(b=4, t=256, seed=5)
    out = []
    for c in chunks:
        torch.manual_seed(0)  # the same parameters at every C
        layer = LaCTLayer(32, num_heads=2, num_attn_heads=4, chunk_size=c, window_size=0,
                          low_rank=4, use_momentum=False, weight_norm=None,
                          inner_lr=inner_lr).to(D64)  # fmt: skip
        out.append(layer.ttt_diagnostics(x)["grad_norm"])
    return out


def test_chunk_mean_update_norm_does_not_grow_with_chunk_size():
    """Independent tokens: the chunk-mean step averages C gradients, so its size does not grow
    with C (the incoherent parts cancel: it shrinks, about like C^-1/2); the paper's summed lr
    adds C gradients, so its step grows at least like C^1/2 (measured 4.2x from C = 4 to 64)."""
    mean = _raw_step_norms(2.0)
    assert mean[0] >= mean[1] >= mean[2] > 0, mean
    paper = _raw_step_norms(None)
    assert paper[0] < paper[1] < paper[2], paper
    assert paper[2] / paper[0] > 0.8 * (64 / 4) ** 0.5, paper


def test_inner_lr_c_times_base_lr_is_the_paper_setting_exactly():
    """``inner_lr = C * base_lr`` gives the paper's per-token lr: identical outputs and state."""
    paper = _layer(window_size=4, base_lr=0.02, inner_lr=None)
    same = _like(paper, inner_lr=4 * 0.02)
    x = _x(t=13)
    (y0, c0), (y1, c1) = paper(x, use_cache=True), same(x, use_cache=True)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-13)
    for a, b in zip(c1.ttt.weights, c0.ttt.weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    assert (_like(paper, inner_lr=1.0)(x)[0] - y0).abs().max() > 1e-4  # other eta: other output


@torch.no_grad()
def test_with_muon_the_inner_lr_scale_cancels():
    """Newton-Schulz normalises each update: the chunk-mean and the paper setting (any global
    lr scale) give the same layer output up to the NS eps (1e-7 next to ``||Delta||``); lr only
    weights tokens against each other. (At the paper's base_lr 1e-3 and C = 4 the steps are so
    small that the eps shows: 4e-4 relative.)"""
    paper = _layer(window_size=4, use_muon=True, inner_lr=None, base_lr=0.05)
    x = _x(t=13)
    y0, _ = paper(x)
    for eta in (0.5, 32.0):
        y, _ = _like(paper, inner_lr=eta)(x)
        assert float((y - y0).norm() / y0.norm()) < 2e-5, eta
    no_muon = _like(paper, use_muon=False)
    y1, _ = no_muon(x)
    assert float((_like(no_muon, inner_lr=32.0)(x)[0] - y1).norm() / y1.norm()) > 1e-2


def test_presets_move_their_fast_weights_and_the_paper_setting_does_not():
    """At initialisation, on random bytes: the LM presets' default inner lr moves the fast
    weights by >= 5 % over 8 chunks; the paper's summed 1e-3 moves them by < 0.5 %."""
    g = torch.Generator().manual_seed(0)
    for preset in (lact_tiny, lact_small):
        for inner_lr, lo, hi in ((LaCTConfig.inner_lr, 0.05, 2.0), (None, 0.0, 0.005)):
            torch.manual_seed(0)
            model = LaCTForCausalLM(preset(inner_lr=inner_lr))
            ids = torch.randint(0, 256, (2, 8 * model.config.chunk_size), generator=g)
            for diag in model.ttt_diagnostics(ids).values():
                assert lo <= diag["drift"] < hi, (preset.__name__, inner_lr, diag)


def test_paper_presets_keep_the_paper_lr_and_old_configs_read_as_paper():
    assert lact_760m().inner_lr is None and lact_3b().inner_lr is None
    assert lact_tiny().inner_lr == LaCTConfig.inner_lr > 0
    old = lact_tiny().to_dict()
    del old["inner_lr"], old["ttt_updates"]  # a config.json written before these fields
    cfg = LaCTConfig.from_dict(old)
    assert cfg.inner_lr is None and cfg.ttt_updates is True


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), True])
def test_inner_lr_validation(bad):
    with pytest.raises(ValueError, match="inner_lr"):
        LaCTLayer(32, 2, num_attn_heads=4, chunk_size=4, window_size=4, inner_lr=bad)


# ------------------------------------------------------------------ updates off
def test_updates_off_is_the_static_swiglu_with_the_same_parameters():
    on = _layer(window_size=4, use_muon=True, inner_lr=2.0)
    off = _like(on, ttt_updates=False)
    assert {k: v.shape for k, v in on.state_dict().items()} == {
        k: v.shape for k, v in off.state_dict().items()
    }
    x = _x(t=13)
    y_on, _ = on(x)
    y_off, _ = off(x)
    assert (y_on - y_off).abs().max() > 1e-4  # the updates matter here ...
    # ... and off equals the op with a chunk longer than the sequence (never updated)
    y_big, _ = _like(on, window_size=0, chunk_size=64)(x)
    y_off0, _ = _like(on, window_size=0, ttt_updates=False)(x)
    torch.testing.assert_close(y_off0, y_big, rtol=1e-12, atol=1e-12)


def test_updates_off_output_depends_on_its_own_token_only():
    """Pure TTT with updates off: perturbing token s changes the output at s and nowhere else."""
    layer = _layer(ttt_updates=False)
    x = _x(t=10)
    y, _ = layer(x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2, _ = layer(x2)
    changed = (y2 - y).abs().amax(dim=(0, 2)) > 1e-12
    assert changed.tolist() == [t == 3 for t in range(10)]
    # the static branch by hand: f_W0(q~) through the layer's own norm, gate and o_proj
    qk, v, heads = layer._split_projection(x)
    rope = rope_tables(range(10), layer.attn_head_dim, theta=layer.options.rope_theta, dtype=D64)
    qt, _, _, _, _ = layer._ttt_inputs(x, qk, v, heads, rope)
    w0 = FastWeights(*[w.expand(2, *w.shape) for w in layer.initial_weights()])
    o = layer.ttt_norm(swiglu_apply(w0, qt)) * F.silu(layer.gate_proj(x)).unsqueeze(-1)
    torch.testing.assert_close(y, layer.o_proj(o.flatten(-2)), rtol=1e-12, atol=1e-12)


def test_updates_off_decodes_with_a_cache_and_keeps_no_fast_state():
    layer = _layer(window_size=4, ttt_updates=False)
    x = _x(t=11)
    y, _ = layer(x)
    y1, cache = layer(x[:, :6], use_cache=True)
    assert cache.ttt is None
    outs = [y1]
    for t in range(6, 11):
        yt, cache = layer(x[:, t : t + 1], cache=cache)
        outs.append(yt)
    torch.testing.assert_close(torch.cat(outs, dim=1), y, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ diagnostics
def test_diagnostics_match_the_one_shot_state_and_the_raw_step():
    layer = _layer(use_momentum=False, weight_norm=None, inner_lr=2.0)
    x = _x(t=12)  # 3 complete chunks
    diag = layer.ttt_diagnostics(x)
    assert diag["updates"] == 3
    _, cache = layer(x, use_cache=True)
    w0 = layer.initial_weights()
    w = cache.ttt.weights
    num = sum(((a - b) ** 2).sum(dim=(-2, -1)) for a, b in zip(w, w0, strict=True)).sqrt()
    den = sum((b**2).sum(dim=(-2, -1)) for b in w0).sqrt()
    assert diag["drift"] == pytest.approx(float((num / den).mean().detach()), rel=1e-9)
    down = ((w.down - w0.down).flatten(-2).norm(dim=-1) / w0.down.flatten(-2).norm(dim=-1)).mean()
    down = down.detach()
    assert diag["drift_down"] == pytest.approx(float(down), rel=1e-9)
    # plain GD without a weight norm applies exactly the raw step
    assert diag["update_norm"] == pytest.approx(diag["grad_norm"], rel=1e-9)
    assert diag["output_change"] > 1e-3 and diag["grad_norm"] > 0


def test_diagnostics_of_muon_and_of_updates_off():
    x = _x(t=12)
    muon = _layer(use_muon=True).ttt_diagnostics(x)
    assert muon["update_norm"] > 0.05  # Newton-Schulz steps have O(1) size at any lr
    off = _layer(ttt_updates=False).ttt_diagnostics(x)
    assert off["updates"] == 0
    assert off["drift"] == off["update_norm"] == off["grad_norm"] == off["output_change"] == 0
    with pytest.raises(ValueError, match="use_ttt=False"):
        LaCTLayer(32, 2, num_attn_heads=4, window_size=4, use_ttt=False).ttt_diagnostics(x)


def test_model_diagnostics_per_lact_layer():
    torch.manual_seed(0)
    model = LaCTForCausalLM(lact_tiny(num_layers=3))
    ids = torch.randint(0, 256, (2, 40))
    diag = model.ttt_diagnostics(ids)
    assert sorted(diag) == [0, 1, 2]
    assert all(d["updates"] == 40 // 16 and d["drift"] > 0 for d in diag.values())
    assert model.training  # restored
    assert LaCTForCausalLM(swa_baseline(lact_tiny())).ttt_diagnostics(ids) == {}
