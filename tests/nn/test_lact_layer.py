"""LaCTLayer / BidirectionalLaCTLayer: causality, streaming, varlen, padding, flags, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer
from batchcraft.nn.lact import LaCTLayer, LaCTLayerOptions, inv_softplus
from batchcraft.ops.lact import FastWeights, LaCTOptions, TTTOp


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


# ------------------------------------------------------ the layer against an independent formula
def _rope_ref(x, theta):
    """Rotate-half RoPE written with complex numbers: pairs (x_i, x_{i + D/2}) turn by
    pos * theta^(-2i/D). x: [B, T, h, Dx]."""
    t, dx = x.shape[1], x.shape[-1]
    half = dx // 2
    freq = theta ** (-2.0 * torch.arange(half, dtype=D64) / dx)  # [half]
    ang = torch.arange(t, dtype=D64)[:, None] * freq  # [T, half]
    rot = torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
    z = torch.complex(x[..., :half], x[..., half:]) * rot
    return torch.cat([z.real, z.imag], dim=-1)


def _rms(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _lin(m, x):
    return x @ m.weight.T + (0 if m.bias is None else m.bias)


def _reference_layer(layer, x):
    """LaCTLayer.forward from its parameters and the layer description alone: dense windowed
    softmax attention, the reference op for the TTT branch (itself pinned by the op tests)."""
    from batchcraft.ops.lact import naive_lact

    o = layer.options
    b, t, d = x.shape
    h, ha = o.num_heads, o.attn_heads
    dd, da = d // h, d // ha
    q, k, v = _lin(layer.qkv, x).split(d, dim=-1)
    if o.qk_norm:
        q, k = _rms(q, layer.q_norm.weight, 1e-6), _rms(k, layer.k_norm.weight, 1e-6)
    out = torch.zeros_like(x)
    w = o.window_size
    if w is None or w > 0:
        qa, ka = q.reshape(b, t, ha, da), k.reshape(b, t, ha, da)
        if o.use_rope:
            qa, ka = _rope_ref(qa, o.rope_theta), _rope_ref(ka, o.rope_theta)
        va = v.reshape(b, t, ha, da)  # values are never rotated
        scores = torch.einsum("bthd,bshd->bhts", qa, ka) / math.sqrt(da)
        ti, si = torch.arange(t)[:, None], torch.arange(t)[None, :]
        allowed = (si <= ti) & ((ti - si < w) if w is not None else True)
        p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = out + torch.einsum("bhts,bshd->bthd", p, va).reshape(b, t, d)
    if o.use_ttt:

        def fast(z, i):  # affine, SiLU, L2 over each head's D
            z = F.silu((z * layer.qk_scale[i] + layer.qk_offset[i]).reshape(b, t, h, dd))
            return z / (z.norm(dim=-1, keepdim=True) + 1e-5)

        qt, kt = fast(q, 0), fast(k, 1)
        vt = v.reshape(b, t, h, dd)
        vt = F.silu(vt) if o.v_silu else vt
        if o.use_rope:
            qt = _rope_ref(qt.reshape(b, t, ha, da), o.rope_theta).reshape(b, t, h, dd)
            kt = _rope_ref(kt.reshape(b, t, ha, da), o.rope_theta).reshape(b, t, h, dd)
        lr = F.softplus(_lin(layer.lr_proj, x) + math.log(math.expm1(o.base_lr)))
        if o.inner_lr is not None:  # chunk-mean inner loss: token weights 1 at init, step eta
            lr = lr / o.base_lr * o.inner_lr / o.chunk_size
        beta = torch.sigmoid(_lin(layer.beta_proj, x)) if o.use_momentum else None
        if o.fast_weight == "linear":
            w0 = FastWeights(None, None, layer.w_down)
        elif o.init == "low_rank":
            eye = 0.5 * torch.eye(layer.hidden_dim, dd, dtype=D64)
            w0 = FastWeights(layer.gate_l @ layer.gate_r + eye, layer.up_l @ layer.up_r + eye,
                             layer.w_down)  # fmt: skip
        else:
            w0 = FastWeights(layer.w_gate, layer.w_up, layer.w_down)
        ot, _ = naive_lact(
            qt, kt, vt, lr.reshape(b, t, h, 3), w0, beta=beta,
            chunk_size=o.chunk_size if o.ttt_updates else t + 1,  # off: the static SwiGLU W0
            muon=o.muon if o.use_muon else None, muon_steps=o.muon_steps,
            weight_norm=o.weight_norm, fast_weight=o.fast_weight,
        )  # fmt: skip
        ot = _rms(ot, layer.ttt_norm.weight, 1e-5)
        if o.output_gate:
            ot = ot * F.silu(_lin(layer.gate_proj, x))[..., None]
        out = out + ot.reshape(b, t, d)
    return out @ layer.o_proj.weight.T


def _randomised(**kw):
    """A layer whose every parameter is off its structured init (so swapped or dropped
    parameters show), with an lr large enough for the updates to matter."""
    layer = _layer(base_lr=0.05, **kw)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


REF_FLAGS = {
    "default": {},
    "window6": {"window_size": 6},
    "qk_norm_bias": {"qk_norm": True, "qkv_bias": True},
    "no_v_silu_full_init": {"v_silu": False, "init": "full"},
    "nope": {"use_rope": False},
    "full_attention": {"window_size": None},
    "pure_ttt": {"window_size": 0},
    "linear": {"fast_weight": "linear"},
    "no_gate_no_momentum": {"output_gate": False, "use_momentum": False},
    "muon_classic_pre": {"use_muon": True, "muon": "classic", "weight_norm": "pre"},
    "swa_only": {"use_ttt": False},
    "chunk_mean_lr": {"inner_lr": 3.0},
    "chunk_mean_lr_muon": {"inner_lr": 0.5, "use_muon": True},
    "updates_off": {"ttt_updates": False},
    "updates_off_pure_ttt": {"ttt_updates": False, "window_size": 0, "inner_lr": 3.0},
}


@pytest.mark.parametrize("flags", list(REF_FLAGS.values()), ids=list(REF_FLAGS))
def test_layer_equals_independent_formula(flags):
    layer = _randomised(**flags)
    x = _x(t=13)
    y, _ = layer(x)
    torch.testing.assert_close(y, _reference_layer(layer, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("flags", list(REF_FLAGS.values()), ids=list(REF_FLAGS))
def test_layer_gradients_equal_independent_formula(flags):
    """The fused parts of the layer (one projection matmul, the q/k preparation and the output
    norm/gate nodes with hand-written backwards, shared RoPE tables, the fused chunk loop) give
    the gradients of the plain composition, for the input and every parameter."""
    layer = _randomised(**flags)
    x = _x(t=13).requires_grad_(True)
    params = [x, *layer.parameters()]
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    g = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(3), dtype=D64)
    got = torch.autograd.grad((layer(x)[0] * g).sum(), params, allow_unused=True)
    want = torch.autograd.grad((_reference_layer(layer, x) * g).sum(), params, allow_unused=True)
    for name, a, b in zip(names, got, want, strict=True):
        # the one projection matmul gives an unused projection (the lr heads with updates off) an
        # exact zero gradient where the composition gives None: the same gradient
        a = torch.zeros_like(b) if a is None and b is not None else a
        b = torch.zeros_like(a) if b is None and a is not None else b
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(
                a, b, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_values_are_not_rotated():
    """Attention is shift invariant in position iff only q and k are rotated: with full attention
    and no TTT, a sequence whose positions all start 7 later (a cache holding nothing but the
    offset) gives the same outputs."""
    from batchcraft.nn.attention import KVBuffer
    from batchcraft.nn.lact import LaCTLayerCache

    layer = _randomised(use_ttt=False, window_size=None)
    x = _x(t=9)
    y, _ = layer(x)
    ha, da = layer.num_attn_heads, layer.attn_head_dim
    empty = KVBuffer.empty(2, ha, da, window=None, like=x)
    shifted, _ = layer(x, cache=LaCTLayerCache(ttt=None, kv=empty, position=7))
    torch.testing.assert_close(shifted, y, rtol=1e-9, atol=1e-10)


def test_inverse_softplus_gives_base_lr_at_init(monkeypatch):
    for y in (1e-4, 1e-3, 0.05, 1.0, 7.5):
        torch.testing.assert_close(F.softplus(torch.tensor(inv_softplus(y), dtype=D64)),
                                   torch.tensor(y, dtype=D64), rtol=1e-12, atol=0)  # fmt: skip
    layer = LaCTLayer(32, 2, num_attn_heads=4, chunk_size=4, window_size=4, low_rank=4,
                      base_lr=0.02).to(D64)  # fmt: skip
    with torch.no_grad():
        layer.lr_proj.weight.zero_()  # the spec init has zero bias: lr == base_lr exactly
    seen = []
    import batchcraft.nn.lact as mod

    real = mod.lact

    def spy(*args, **kwargs):
        seen.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "lact", spy)
    layer(_x(t=5))
    torch.testing.assert_close(seen[0], torch.full_like(seen[0], 0.02), rtol=1e-12, atol=0)


def test_cache_holds_the_last_window_minus_one_rotated_keys_and_the_pending_tokens():
    """Cache contents by formula: W - 1 post-RoPE keys/values of the last positions, T mod C
    pending tokens, T consumed tokens."""
    layer = _randomised(window_size=6)
    x = _x(b=2, t=15)
    _, cache = layer(x, use_cache=True)
    assert cache is not None and cache.kv is not None and cache.ttt is not None
    ha, da, d = layer.num_attn_heads, layer.attn_head_dim, layer.hidden_size
    _, k, v = _lin(layer.qkv, x).split(d, dim=-1)
    k_rot = _rope_ref(k.reshape(2, 15, ha, da), 1e6)
    assert cache.kv.k.shape == (2, 5, ha, da) and cache.position == 15
    torch.testing.assert_close(cache.kv.k, k_rot[:, 10:], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cache.kv.v, v.reshape(2, 15, ha, da)[:, 10:], rtol=0, atol=0)
    assert cache.ttt.num_tokens == 15 and cache.ttt.num_pending == 15 % 4
    # a prompt shorter than the window: the slots before position 0 are zeros
    _, short = layer(x[:, :3], use_cache=True)
    assert short is not None and short.kv is not None
    assert torch.all(short.kv.k[:, :2] == 0)
    torch.testing.assert_close(short.kv.k[:, 2:], k_rot[:, :3], rtol=1e-10, atol=1e-12)


def test_detached_cache_continues_with_the_same_values_and_no_cross_call_gradient():
    layer = _randomised(use_muon=True)
    x = _x(t=13).requires_grad_(True)
    full, _ = layer(x)
    _, cache = layer(x[:, :6], use_cache=True)
    assert cache is not None
    y2, _ = layer(x[:, 6:], cache=cache.detach())
    torch.testing.assert_close(y2, full[:, 6:], rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(y2.sum(), [x])
    assert float(g[:, :6].abs().max()) == 0.0 and float(g[:, 6:].abs().max()) > 0.0


def _reference_bidirectional(layer, x, n):
    """BidirectionalLaCTLayer from its description: SiLU on q, k, v; L2 on q, k; no RoPE; one
    update on the first n tokens (reference op), apply to all; per-head RMSNorm; o_proj."""
    from batchcraft.ops.lact import naive_lact

    b, t, d = x.shape
    h, dd = layer.num_heads, layer.head_dim
    q, k, v = F.silu(x @ layer.qkv.weight.T).split(d, dim=-1)
    q, k, v = (z.reshape(b, t, h, dd) for z in (q, k, v))
    q, k = (z / (z.norm(dim=-1, keepdim=True) + 1e-5) for z in (q, k))
    lr = F.softplus(_lin(layer.lr_proj, x) + math.log(math.expm1(layer.base_lr)))
    o = layer.lact_options
    out, _ = naive_lact(
        q, k, v, lr.reshape(b, t, h, 3), FastWeights(layer.w_gate, layer.w_up, layer.w_down),
        schedule=[TTTOp("update", 0, n), TTTOp("apply", 0, t)],
        muon=o.muon if o.use_muon else None, muon_steps=o.muon_steps, weight_norm=o.weight_norm,
    )  # fmt: skip
    if layer.o_norm is not None:
        out = _rms(out, layer.o_norm.weight, 1e-5)
    return out.reshape(b, t, d) @ layer.o_proj.weight.T


@pytest.mark.parametrize(
    "kw",
    [{}, {"use_muon": False, "o_norm": False}, {"muon": "tuned", "weight_norm": "pre"}],
    ids=["classic", "gd-no-norm", "tuned-pre"],
)
def test_bidirectional_equals_independent_formula(kw):
    layer = _bidir(base_lr=0.5, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = _x(t=11)
    y, _ = layer(x, num_update=7)
    torch.testing.assert_close(y, _reference_bidirectional(layer, x, 7), rtol=1e-9, atol=1e-10)


def test_bidirectional_updates_off_is_the_static_swiglu_branch_and_drift_measures_the_update():
    """update=False renders with W0 (same parameters): a static SwiGLU branch, written out here."""
    layer = _bidir()
    x = _x(t=11)
    y_off, w_off = layer(x, num_update=7, update=False)
    b, t, d = x.shape
    h, dd = layer.num_heads, layer.head_dim
    q = F.silu(x @ layer.qkv.weight.T)[..., :d].reshape(b, t, h, dd)
    q = q / (q.norm(dim=-1, keepdim=True) + 1e-5)
    zg, zu = (torch.einsum("bthd,hed->bthe", q, w) for w in (layer.w_gate, layer.w_up))
    o = torch.einsum("bthe,hde->bthd", F.silu(zg) * zu, layer.w_down)  # W_d (silu(W_g q) * W_u q)
    ref = _rms(o, layer.o_norm.weight, 1e-5).reshape(b, t, d) @ layer.o_proj.weight.T
    torch.testing.assert_close(y_off, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(w_off.down, layer.w_down.expand(b, *layer.w_down.shape))
    y_on, w_on = layer(x, num_update=7)
    assert (y_on - y_off).abs().max() > 1e-3  # the update changes the outputs
    # reconstruct(update=False) is W0, so its rendering ignores the input tokens
    w0 = layer.reconstruct(x[:, :7], update=False)
    torch.testing.assert_close(layer.render(w0, x), y_off, rtol=0, atol=0)
    # drift: exactly 0 without an update; ||W - W0||_F / ||W0||_F (mean over heads) with one
    torch.testing.assert_close(layer.drift(w0), torch.zeros(b, 3, dtype=D64), rtol=0, atol=0)
    dr = layer.drift(layer.reconstruct(x[:, :7]))
    ref_dr = torch.stack(
        [((w - w0) ** 2).sum((-2, -1)).sqrt().div((w0**2).sum((-2, -1)).sqrt()).mean(-1)
         for w, w0 in zip(w_on, layer.initial_weights(), strict=True)], dim=-1,
    )  # fmt: skip
    torch.testing.assert_close(dr, ref_dr, rtol=1e-10, atol=1e-12)
    assert dr.shape == (b, 3) and (dr > 0.01).all()
