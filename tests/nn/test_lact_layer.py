"""LaCTLayer / BidirectionalLaCTLayer: causality, streaming, varlen, padding, flags, errors."""

from __future__ import annotations

import pytest
import torch

from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer
from batchcraft.nn.lact import LaCTLayer, LaCTLayerOptions
from batchcraft.ops.lact import LaCTOptions


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (20x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


D64 = torch.float64


def _layer(**kw) -> LaCTLayer:
    args = dict(num_heads=2, num_attn_heads=4, chunk_size=4, window_size=4, low_rank=4)
    args.update(kw)
    torch.manual_seed(0)
    layer = LaCTLayer(32, **args).to(D64)
    with torch.no_grad():  # make the TTT branch loud so tests see it (gate starts near 0)
        if layer.use_ttt and layer.gate_proj is not None:
            layer.gate_proj.bias.fill_(2.0)
        if layer.use_ttt:
            layer.lr_proj.bias.fill_(3.0)
    return layer


def _x(b=2, t=13, seed=1):
    return torch.randn(b, t, 32, generator=torch.Generator().manual_seed(seed), dtype=D64)


@pytest.mark.parametrize("t_pert", [0, 4, 12])
def test_layer_causality(t_pert):
    layer = _layer(use_muon=True)
    x = _x()
    y, _ = layer(x)
    x2 = x.clone()
    x2[:, t_pert] += 1.0
    y2, _ = layer(x2)
    torch.testing.assert_close(y2[:, :t_pert], y[:, :t_pert], rtol=0, atol=1e-12)
    assert (y2[:, t_pert] - y[:, t_pert]).abs().max() > 1e-6


def test_ttt_branch_matters_beyond_window():
    """A token more than W back still changes later outputs through the fast weights."""
    layer = _layer()
    x = _x(t=16)
    x2 = x.clone()
    x2[:, 1] += 1.0
    y, _ = layer(x)
    y2, _ = layer(x2)
    assert (y2[:, 12:] - y[:, 12:]).abs().max() > 1e-8  # position 12 - 1 > W = 4
    swa = _layer(use_ttt=False, window_size=4)  # same attention weights, no TTT branch
    missing, unexpected = swa.load_state_dict(layer.state_dict(), strict=False)
    assert not missing and unexpected  # only TTT parameters are left out
    ya, _ = swa(x)
    yb, _ = swa(x2)
    torch.testing.assert_close(ya[:, 5:], yb[:, 5:], rtol=0, atol=0)


@pytest.mark.parametrize("splits", [[13], [1] * 13, [5, 3, 5], [4, 4, 4, 1], [2, 11]], ids=str)
@pytest.mark.parametrize("kind", ["lact", "swa", "full"])
def test_streaming_with_cache_equals_one_shot(splits, kind):
    kw = {"lact": {}, "swa": {"use_ttt": False}, "full": {"use_ttt": False, "window_size": None}}
    layer = _layer(**kw[kind])
    x = _x()
    full, _ = layer(x)
    cache, outs, s = None, [], 0
    for m in splits:
        y, cache = layer(x[:, s : s + m], cache=cache, use_cache=True)
        outs.append(y)
        s += m
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    assert cache is not None and cache.position == 13


def test_cache_size_constant_in_length():
    layer = _layer()
    _, c3 = layer(_x(b=1, t=12), use_cache=True)  # 3C
    _, c6 = layer(_x(b=1, t=24), use_cache=True)  # 6C
    assert c3 is not None and c6 is not None
    assert {k: v.shape for k, v in c3.tensors().items()} == {
        k: v.shape for k, v in c6.tensors().items()
    }
    assert c3.nbytes() == c6.nbytes()


def test_cu_seqlens_equals_separate_calls():
    layer = _layer(use_muon=True)
    x = _x(b=1, t=19)
    cu = torch.tensor([0, 6, 7, 19])
    packed, cache = layer(x, cu_seqlens=cu)
    assert cache is None
    parts = [layer(x[:, a:b])[0] for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)]
    torch.testing.assert_close(packed, torch.cat(parts, 1), rtol=1e-10, atol=1e-10)


def test_right_padding_equals_unpadded_and_left_padding_raises():
    layer = _layer()
    x = _x(b=3, t=11)
    lengths = [11, 6, 9]
    mask = torch.zeros(3, 11, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    x_pad = x.clone()
    x_pad[mask == 0] = 1e3  # garbage in the padding must not matter
    y, _ = layer(x_pad, attention_mask=mask)
    for i, n in enumerate(lengths):
        yi, _ = layer(x[i : i + 1, :n])
        torch.testing.assert_close(y[i : i + 1, :n], yi, rtol=1e-10, atol=1e-10)
        assert torch.all(y[i, n:] == 0)
    left = mask.flip(1)
    with pytest.raises(ValueError, match="right padding"):
        layer(x, attention_mask=left)


def test_naive_and_chunk_impls_agree_on_layer_outputs_and_grads():
    outs = []
    for impl in ("naive", "chunk"):
        layer = _layer(use_muon=True, lact_impl=impl)
        x = _x(t=10).requires_grad_(True)
        y, _ = layer(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        outs.append((y, grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-10)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


FLAGS = {
    "default": {},
    "no_momentum": {"use_momentum": False},
    "muon_classic": {"use_muon": True, "muon": "classic"},
    "pre_norm": {"weight_norm": "pre"},
    "no_norm": {"weight_norm": None},
    "nope": {"use_rope": False},
    "no_gate": {"output_gate": False},
    "no_v_silu": {"v_silu": False},
    "linear": {"fast_weight": "linear"},
    "full_init": {"init": "full"},
    "qk_norm_bias": {"qk_norm": True, "qkv_bias": True},
    "inter2": {"inter_multi": 2},
    "pure_ttt": {"window_size": 0},
}


@pytest.mark.parametrize("flags", list(FLAGS.values()), ids=list(FLAGS))
def test_flag_grid_shapes(flags):
    layer = _layer(**flags)
    y, cache = layer(_x(b=2, t=9), use_cache=True)
    assert y.shape == (2, 9, 32) and torch.isfinite(y).all()
    y1, _ = layer(_x(b=2, t=1, seed=5), cache=cache)
    assert y1.shape == (2, 1, 32)


def test_reset_parameters_low_rank_init():
    layer = LaCTLayer(256, num_heads=2, num_attn_heads=4, chunk_size=8, window_size=8, low_rank=32)
    torch.testing.assert_close(layer.gate_l.std().item(), 0.5 / 32**0.5, rtol=0.05, atol=0)
    torch.testing.assert_close(layer.gate_r.std().item(), 0.5 / 128**0.5, rtol=0.05, atol=0)
    torch.testing.assert_close(layer.w_down.std().item(), 1 / 128**0.5, rtol=0.05, atol=0)
    w0 = layer.initial_weights()
    assert w0.gate is not None and w0.gate.shape == (2, 128, 128)
    # identity part: the diagonal is ~0.5 on average
    assert abs(torch.diagonal(w0.gate, dim1=-2, dim2=-1).mean().item() - 0.5) < 0.05
    with torch.no_grad():
        layer.gate_l.zero_()
    layer.reset_parameters()
    assert layer.gate_l.std() > 0
    assert torch.all(layer.lr_proj.bias == 0) and torch.all(layer.qk_scale == 1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_heads": 3}, "divisible by num_heads"),
        ({"num_attn_heads": 5}, "divisible by num_attn_heads"),
        ({"num_heads": 4, "num_attn_heads": 2}, "multiple of the attention head dim"),
        ({"window_size": 2, "chunk_size": 4}, r"window_size \(2\) must be >= chunk_size \(4\)"),
        ({"lr_dim": 3}, "lr_dim"),
        ({"fast_weight": "mlp"}, "fast_weight"),
        ({"init": "zeros"}, "init"),
        ({"weight_norm": "mid"}, "weight_norm"),
        ({"use_ttt": False, "window_size": 0}, "no token mixing"),
        ({"muon": "fast"}, "muon"),
        ({"base_lr": float("nan")}, "base_lr"),
        ({"base_lr": -1e-3}, "base_lr"),
        ({"inter_multi": 0}, "inter_multi"),
        ({"muon_steps": 6}, "muon_steps"),
    ],
)
def test_validation_errors(kw, match):
    args = dict(num_heads=2, num_attn_heads=4, chunk_size=4, window_size=4, low_rank=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        LaCTLayer(32, **args)


def test_options_object_and_keywords_build_the_same_layer(monkeypatch):
    kw = dict(num_heads=2, num_attn_heads=4, chunk_size=4, window_size=4, low_rank=4,
              use_muon=True, muon_steps=3, recompute=True, inner_loss="mse")  # fmt: skip
    opts = LaCTLayerOptions(hidden_size=32, **kw)
    a, b = LaCTLayer(options=opts), LaCTLayer(32, **kw)
    assert a.options == b.options == opts
    assert type(a.lact_options) is LaCTOptions and a.lact_options == LaCTOptions.project(opts)
    assert {n: p.shape for n, p in a.named_parameters()} == {
        n: p.shape for n, p in b.named_parameters()
    }
    assert LaCTLayer(options=opts, window_size=8).options.window_size == 8  # keywords override
    # the op receives exactly the layer's op options
    import batchcraft.nn.lact as mod

    seen = []
    real = mod.lact

    def spy(*args, **kwargs):
        seen.append(args[5])
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "lact", spy)
    a.double()(_x(t=5))
    assert seen == [a.lact_options]
    with pytest.raises(TypeError, match="unknown LaCTLayerOptions option"):
        LaCTLayer(32, chunk=4)
    with pytest.raises(TypeError, match="needs hidden_size"):
        LaCTLayer(num_heads=2)


def test_forward_input_errors():
    layer = _layer()
    with pytest.raises(ValueError, match=r"x must be \[B, T, 32\]"):
        layer(torch.randn(2, 3, 16, dtype=D64))
    with pytest.raises(ValueError, match="B = 2"):
        layer(_x(b=2, t=8), cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="end at T"):
        layer(_x(b=1, t=8), cu_seqlens=torch.tensor([0, 4, 7]))
    _, cache = layer(_x(b=1, t=4), use_cache=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        layer(_x(b=1, t=4), cache=cache, cu_seqlens=torch.tensor([0, 4]))


# ---------------------------------------------------------------- bidirectional
def _bidir(**kw) -> BidirectionalLaCTLayer:
    torch.manual_seed(0)
    return BidirectionalLaCTLayer(32, 16, **kw).to(D64)


def test_bidirectional_permutation_equivariant():
    layer = _bidir()
    x = _x(t=10)
    y, w = layer(x)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    yp, wp = layer(x[:, perm])
    torch.testing.assert_close(yp, y[:, perm], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(wp.down, w.down, rtol=1e-9, atol=1e-12)


def test_reconstruct_render_equals_forward_and_uses_all_inputs():
    layer = _bidir(use_muon=False)
    x_in, x_q = _x(t=8), _x(t=5, seed=2)
    y, _ = layer(torch.cat([x_in, x_q], 1), num_update=8)
    w = layer.reconstruct(x_in)
    torch.testing.assert_close(layer.render(w, x_q), y[:, 8:], rtol=1e-10, atol=1e-12)
    x_in2 = x_in.clone()
    x_in2[:, 0] += 1.0  # every input view matters
    assert (layer.render(layer.reconstruct(x_in2), x_q) - y[:, 8:]).abs().max() > 1e-9
    with pytest.raises(ValueError, match="num_update"):
        layer(x_in, num_update=9)
    with pytest.raises(ValueError, match="divisible by head_dim"):
        BidirectionalLaCTLayer(30, 16)


def test_bidirectional_muon_update_keeps_initial_weights():
    """Spec §10.1 regression: with Muon the updated weights still depend on W0."""
    layer = _bidir(use_muon=True)
    x = _x(t=6)
    w = layer.reconstruct(x)
    with torch.no_grad():
        layer.w_down.mul_(2.0)
    w2 = layer.reconstruct(x)
    assert (w.down - w2.down).abs().max() > 1e-6
