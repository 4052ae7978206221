"""LayerNormLSTM / LayerNormGRU modules: exact reduction to torch, packed/lengths, layers, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from batchcraft.nn.rnn import LayerNormGRU, LayerNormLSTM
from batchcraft.nn.rnn_cell import LayerNormGRUCell, LayerNormLSTMCell


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PAIRS = {"lstm": (LayerNormLSTM, nn.LSTM), "gru": (LayerNormGRU, nn.GRU)}


def _flat(res) -> list[torch.Tensor]:
    out, st = res
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return [out, *(st if isinstance(st, tuple) else (st,))]


def _pair(mode: str, dtype: torch.dtype, **kw):
    ours_cls, torch_cls = PAIRS[mode]
    ref = torch_cls(3, 5, dtype=dtype, **kw).eval()
    ours = ours_cls(3, 5, dtype=dtype, layer_norm=False, **kw).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected  # every weight shared, none left out
    return ours, ref


CONFIGS = [
    ("1layer", {}),
    ("3layers", {"num_layers": 3}),
    ("bidir", {"bidirectional": True}),
    (
        "3layers_bidir_bf_drop",
        {"num_layers": 3, "bidirectional": True, "batch_first": True, "dropout": 0.3},
    ),
    ("nobias", {"bias": False, "num_layers": 2}),
]


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zeros", "h0"])
def test_layer_norm_false_equals_torch(
    name: str, kw: dict, mode: str, dtype: torch.dtype, with_state: bool
) -> None:
    ours, ref = _pair(mode, dtype, **kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=g, dtype=dtype)
    n = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    hx = None
    if with_state:
        b = 4 if kw.get("batch_first") else 7
        h0 = torch.randn(n, b, 5, generator=g, dtype=dtype)
        hx = (h0, torch.randn(n, b, 5, generator=g, dtype=dtype)) if mode == "lstm" else h0
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for a, e in zip(_flat(ours(x, hx)), _flat(ref(x, hx)), strict=True):
        assert_close(a, e, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bidir"])
def test_packed_unsorted_equals_torch_with_grads(mode: str, bidir: bool) -> None:
    ours, ref = _pair(mode, torch.float64, num_layers=2, bidirectional=bidir, batch_first=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    lens = torch.tensor([3, 6, 1, 4])
    res = []
    for m in (ours, ref):
        xl = x.clone().requires_grad_(True)
        packed = pack_padded_sequence(xl, lens, batch_first=True, enforce_sorted=False)
        outs = _flat(m(packed))
        sum((o * (k + 1.0)).sin().sum() for k, o in enumerate(outs)).backward()
        res.append([*outs, xl.grad, *(p.grad for p in m.parameters())])
    assert isinstance(
        ours(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))[0],
        torch.nn.utils.rnn.PackedSequence,
    )
    for i, (a, e) in enumerate(zip(*res, strict=True)):
        assert_close(a, e, rtol=1e-10, atol=1e-10, msg=f"output/grad #{i}")


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_lengths_equal_packed_and_padding_is_zero(mode: str) -> None:
    m = PAIRS[mode][0](3, 5, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    lens = torch.tensor([5, 2, 3])
    out_l, st_l = m(x, lengths=lens)
    out_p, st_p = m(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False))
    out_p, _ = pad_packed_sequence(out_p, batch_first=True, total_length=5)
    assert_close(out_l, out_p, rtol=1e-12, atol=1e-12)
    for a, e in zip(_flat((out_l, st_l))[1:], _flat((out_p, st_p))[1:], strict=True):
        assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert out_l[1, 2:].abs().max() == 0 and out_l[2, 3:].abs().max() == 0


def test_cells_equal_torch_cells() -> None:
    x = torch.randn(4, 3, dtype=torch.float64)
    c = LayerNormLSTMCell(3, 5, layer_norm=False).double()
    r = nn.LSTMCell(3, 5).double()
    c.load_state_dict(r.state_dict())
    hx = (torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64))
    for a, e in zip(c(x, hx), r(x, hx), strict=True):
        assert_close(a, e, rtol=1e-12, atol=1e-12)
    gc = LayerNormGRUCell(3, 5, layer_norm=False).double()
    gr = nn.GRUCell(3, 5).double()
    gc.load_state_dict(gr.state_dict())
    assert_close(gc(x, hx[0]), gr(x, hx[0]), rtol=1e-12, atol=1e-12)
    assert gc(x[0]).shape == (5,)  # unbatched


def test_ln_cell_equals_one_step_of_ln_lstm() -> None:
    rnn = LayerNormLSTM(3, 5).double()
    with torch.no_grad():
        for p in rnn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cell = LayerNormLSTMCell(3, 5).double()
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    x = torch.randn(1, 4, 3, dtype=torch.float64)
    _out, (h, c) = rnn(x)
    h1, c1 = cell(x[0])
    assert_close(h1, h[0], rtol=1e-12, atol=1e-12)
    assert_close(c1, c[0], rtol=1e-12, atol=1e-12)


def test_state_dict_keys_and_init() -> None:
    m = LayerNormLSTM(3, 8, num_layers=2, bidirectional=True)
    keys = set(m.state_dict())
    assert set(nn.LSTM(3, 8, num_layers=2, bidirectional=True).state_dict()) <= keys
    assert {"ln_ih_weight_l1_reverse", "ln_hh_bias_l0", "ln_c_weight_l1"} <= keys
    g = LayerNormGRU(3, 8)
    assert {
        "ln_ih_rz_weight_l0",
        "ln_ih_n_bias_l0",
        "ln_hh_rz_weight_l0",
        "ln_hh_n_bias_l0",
    } <= set(g.state_dict())
    assert torch.equal(m.ln_c_weight_l0, torch.ones(8)) and torch.equal(
        m.ln_ih_bias_l1, torch.zeros(32)
    )
    assert m.weight_hh_l0.abs().max() <= 8**-0.5 and m.weight_hh_l0.abs().max() > 0.5 * 8**-0.5


def test_unbatched_matches_batched() -> None:
    m = LayerNormGRU(3, 5, num_layers=2).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    out, h = m(x)
    out_b, _h_b = m(x.unsqueeze(1))
    assert out.shape == (6, 5) and h.shape == (2, 5)
    assert_close(out, out_b[:, 0], rtol=1e-12, atol=1e-12)


def test_dropout_between_layers_only_in_training() -> None:
    m = LayerNormLSTM(3, 5, num_layers=2, dropout=0.5).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(0)
    c = m(x)[0]
    assert (c - a).abs().max() > 1e-6
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        one = LayerNormLSTM(3, 5, num_layers=1, dropout=0.5).double().train()
    # no dropout after the last layer
    assert torch.equal(one(x)[0], one(x)[0])


def test_gradcheck_two_layer_bidirectional() -> None:
    m = LayerNormLSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    def f(x: torch.Tensor, *ps: torch.Tensor):
        sd = dict(zip((n for n, _ in m.named_parameters()), ps, strict=True))
        out, (h, c) = torch.func.functional_call(m, sd, (x,))
        return out, h, c

    assert torch.autograd.gradcheck(
        f, (x, *[p.detach().requires_grad_(True) for p in params]), fast_mode=True
    )


def test_errors() -> None:
    with pytest.raises(NotImplementedError, match="proj_size"):
        LayerNormLSTM(3, 5, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        LayerNormGRU(3, 5, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        LayerNormLSTM(3, 0)
    with pytest.raises(ValueError, match="variant"):
        LayerNormLSTM(3, 5, variant="keras")
    m = LayerNormLSTM(3, 5, num_layers=2)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(4, 2, 7))
    with pytest.raises(ValueError, match=r"\[L\*D, B, H\]"):
        m(torch.randn(4, 2, 3), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(TypeError, match=r"\(h0, c0\)"):
        m(torch.randn(4, 2, 3), torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="lengths"):
        m(torch.randn(4, 2, 3), lengths=[5, 1])
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(4))
    with pytest.raises(ValueError, match="state must be"):
        LayerNormLSTMCell(3, 5)(torch.randn(2, 3), (torch.zeros(3, 5), torch.zeros(3, 5)))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["hoisted", "fused"])
def test_module_fast_paths_equal_naive(impl: str, mode: str) -> None:
    """Multi-layer, bidirectional, packed: the module's fast paths == its reference, grads included."""
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    lens = torch.tensor([3, 6, 1, 4])
    res = []
    for im in ("naive", impl):
        torch.manual_seed(0)
        m = PAIRS[mode][0](3, 5, num_layers=2, bidirectional=True, batch_first=True, impl=im)
        m = m.double()
        xl = x.clone().requires_grad_(True)
        outs = _flat(m(pack_padded_sequence(xl, lens, batch_first=True, enforce_sorted=False)))
        sum((o * (k + 1.0)).sin().sum() for k, o in enumerate(outs)).backward()
        res.append([*outs, xl.grad, *(p.grad for p in m.parameters())])
    for i, (a, e) in enumerate(zip(*res, strict=True)):
        assert_close(a, e, rtol=1e-10, atol=1e-10, msg=f"output/grad #{i}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_compile_equals_naive(mode: str) -> None:
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    outs = []
    for impl in ("naive", "compile"):
        torch.manual_seed(0)
        m = PAIRS[mode][0](3, 4, impl=impl).double()
        res = _flat(m(x))
        sum(o.sum() for o in res).backward()
        outs.append([*res, *(p.grad for p in m.parameters())])
    for a, e in zip(*outs, strict=True):
        assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_convergence_smoke_digits() -> None:
    """LN-LSTM reaches a loss threshold in no more than 1.2x the steps of the LSTM (same lr)."""
    pytest.importorskip("sklearn")
    from batchcraft.experiments.layernorm import digits_sequences, steps_to_threshold

    x, y = digits_sequences()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is much faster on a shared machine
    try:
        s_ln = steps_to_threshold(x, y, layer_norm=True, seed=0, threshold=1.0, max_steps=400)
        s_plain = steps_to_threshold(x, y, layer_norm=False, seed=0, threshold=1.0, max_steps=400)
    finally:
        torch.set_num_threads(threads)
    assert s_ln is not None and s_plain is not None
    assert s_ln <= 1.2 * s_plain


# ---- drop-in compatibility with nn.LSTM / nn.GRU user code ---------------------------------


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"num_layers": 2, "bidirectional": True}, {"num_layers": 3, "bias": False}],
    ids=["1layer", "2layers_bidir", "3layers_nobias"],
)
def test_all_weights_and_flat_weights_match_torch(mode: str, kw: dict) -> None:
    ours, ref = _pair(mode, torch.float64, **kw)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert ours._all_weights == ref._all_weights
    assert len(ours._flat_weights) == len(ref._flat_weights)
    for a, e in zip(ours._flat_weights, ref._flat_weights, strict=True):
        assert isinstance(a, nn.Parameter) and torch.equal(a, e)
    assert [[tuple(p.shape) for p in layer] for layer in ours.all_weights] == [
        [tuple(p.shape) for p in layer] for layer in ref.all_weights
    ]
    for la, le in zip(ours.all_weights, ref.all_weights, strict=True):
        for a, e in zip(la, le, strict=True):
            assert torch.equal(a, e)
    # they are the module's own parameters (an init over all_weights changes the module)
    ours_ln = PAIRS[mode][0](3, 5, **kw)
    names = {id(p): n for n, p in ours_ln.named_parameters()}
    listed = [names[id(p)] for layer in ours_ln.all_weights for p in layer]
    assert listed == ours_ln._flat_weights_names
    assert not any(n.startswith("ln_") for n in listed)  # LN gains/shifts are not torch weights


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_flatten_parameters_is_a_noop(mode: str) -> None:
    m = PAIRS[mode][0](3, 5, num_layers=2).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    before = [p.clone() for p in m.parameters()]
    out = m(x)[0]
    assert m.flatten_parameters() is None
    assert torch.equal(m(x)[0], out)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"])
def test_zero_time_steps_is_a_clear_error(mode: str, batch_first: bool) -> None:
    m = PAIRS[mode][0](3, 5, batch_first=batch_first)
    x = torch.randn(2, 0, 3) if batch_first else torch.randn(0, 2, 3)
    with pytest.raises(ValueError, match=r"no time steps \(T = 0\)"):
        m(x)
    with pytest.raises(ValueError, match=r"T = 0"):
        m(torch.randn(0, 3))  # unbatched


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["naive", "hoisted", "fused"])
@pytest.mark.parametrize("layer_norm", [True, False], ids=["ln", "noln"])
def test_empty_batch_gives_empty_result_like_torch(mode: str, impl: str, layer_norm: bool) -> None:
    ours_cls, torch_cls = PAIRS[mode]
    kw = {"num_layers": 2, "bidirectional": True, "batch_first": True}
    m = ours_cls(3, 5, impl=impl, layer_norm=layer_norm, **kw)
    ref = torch_cls(3, 5, **kw)
    x = torch.randn(0, 4, 3, requires_grad=True)  # B = 0, T = 4
    out, st = m(x)
    out_r, st_r = ref(x)
    assert out.shape == out_r.shape == (0, 4, 10)
    for a, e in zip(
        st if mode == "lstm" else (st,), st_r if mode == "lstm" else (st_r,), strict=True
    ):
        assert a.shape == e.shape == (4, 0, 5)
    out.sum().backward()  # an empty batch still back-propagates (to zero gradients)
    assert x.grad is not None and x.grad.shape == x.shape
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.parameters())


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_dtype_mismatch_says_what_to_do(mode: str) -> None:
    m = PAIRS[mode][0](3, 5)  # fp32 module
    x64 = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"input\.to\(torch\.float32\).*model\.to\(torch\.float64\)"
    ):
        m(x64)
    h64 = torch.zeros(1, 2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="hidden state dtype"):
        m(x64.float(), (h64, h64) if mode == "lstm" else h64)


def test_dropout_with_one_layer_warns_like_torch() -> None:
    for cls, tcls in PAIRS.values():
        with pytest.warns(UserWarning) as ours:
            cls(3, 5, dropout=0.2)
        with pytest.warns(UserWarning) as theirs:
            tcls(3, 5, dropout=0.2)
        assert str(ours[0].message) == str(theirs[0].message)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerNormLSTM(3, 5, num_layers=2, dropout=0.2)  # no warning when it applies
        LayerNormGRU(3, 5, dropout=0.0)


# ---- the maths pinned independently of the library (paper equations written here) -------------


def _ln(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = v.mean(-1, keepdim=True)
    return (v - mu) / torch.sqrt(((v - mu) ** 2).mean(-1, keepdim=True) + eps) * w + b


def _paper_lstm_step(x, h, c, P: dict, eps: float):
    """Supplement eqs. 20-22: LN_hh, LN_ih over 4H, raw c carried, LN_c inside the output tanh."""
    a = (
        _ln(h @ P["weight_hh"].T, P["ln_hh_weight"], P["ln_hh_bias"], eps)
        + _ln(x @ P["weight_ih"].T, P["ln_ih_weight"], P["ln_ih_bias"], eps)
        + P["bias_ih"]
        + P["bias_hh"]
    )
    i, f, g, o = a.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(_ln(c, P["ln_c_weight"], P["ln_c_bias"], eps)), c


def _paper_gru_step(x, h, P: dict, eps: float):
    """Four LNs; reset applied to the normalised recurrent candidate term plus b_hn."""
    hid = h.shape[-1]
    wx, wh, bi, bh = x @ P["weight_ih"].T, h @ P["weight_hh"].T, P["bias_ih"], P["bias_hh"]
    rz = torch.sigmoid(
        _ln(wx[:, : 2 * hid], P["ln_ih_rz_weight"], P["ln_ih_rz_bias"], eps)
        + _ln(wh[:, : 2 * hid], P["ln_hh_rz_weight"], P["ln_hh_rz_bias"], eps)
        + bi[: 2 * hid]
        + bh[: 2 * hid]
    )
    r, z = rz[:, :hid], rz[:, hid:]
    n = torch.tanh(
        _ln(wx[:, 2 * hid :], P["ln_ih_n_weight"], P["ln_ih_n_bias"], eps)
        + bi[2 * hid :]
        + r * (_ln(wh[:, 2 * hid :], P["ln_hh_n_weight"], P["ln_hh_n_bias"], eps) + bh[2 * hid :])
    )
    return (1 - z) * n + z * h


def _paper_stack(m: nn.Module, x: torch.Tensor, states: tuple, eps: float):
    """A stacked (bidirectional) LN-RNN from the steps above, reading parameters by their names."""
    sd = dict(m.named_parameters())
    lstm = isinstance(m, LayerNormLSTM)
    dirs = 2 if m.bidirectional else 1
    finals: list[list[torch.Tensor]] = [[] for _ in states]
    layer_in = x
    for k in range(m.num_layers):
        outs = []
        for d, sfx in enumerate(["", "_reverse"][:dirs]):
            P = {
                n.removesuffix(f"_l{k}{sfx}"): p for n, p in sd.items() if n.endswith(f"_l{k}{sfx}")
            }
            st = [s[k * dirs + d] for s in states]
            ys = [None] * x.shape[0]
            for t in reversed(range(x.shape[0])) if d else range(x.shape[0]):
                if lstm:
                    st = list(_paper_lstm_step(layer_in[t], st[0], st[1], P, eps))
                else:
                    st = [_paper_gru_step(layer_in[t], st[0], P, eps)]
                ys[t] = st[0]
            outs.append(torch.stack(ys))
            for lst, s in zip(finals, st, strict=True):
                lst.append(s)
        layer_in = torch.cat(outs, -1)
    return layer_in, [torch.stack(f) for f in finals]


def _randomise(m: nn.Module, seed: int) -> None:
    """Distinct values for every parameter: gains around 1, everything else around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
            if name.startswith("ln_") and "_weight" in name:
                p.add_(1.0)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("impl", ["naive", "hoisted", "fused"])
def test_module_matches_paper_equations(mode: str, impl: str) -> None:
    """Every LN of every layer/direction wired to its own parameters, with the module's ln_eps."""
    m = PAIRS[mode][0](3, 4, num_layers=2, bidirectional=True, ln_eps=0.05, impl=impl).double()
    _randomise(m, seed=7)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    states = tuple(
        torch.randn(4, 2, 4, generator=g, dtype=torch.float64)
        for _ in range(2 if mode == "lstm" else 1)
    )
    out, st = m(x, states if mode == "lstm" else states[0])
    e_out, e_st = _paper_stack(m, x, states, eps=0.05)
    assert_close(out, e_out, rtol=0, atol=1e-10)
    for a, e in zip(st if mode == "lstm" else (st,), e_st, strict=True):
        assert_close(a, e, rtol=0, atol=1e-10)


def test_cells_match_paper_equations() -> None:
    """From a non-zero state (from h = 0, LN_hh(W_hh h) = β_hh and the gain would not matter)."""
    g = torch.Generator().manual_seed(3)
    x, h, c = (torch.randn(4, n, generator=g, dtype=torch.float64) for n in (3, 5, 5))
    cell = LayerNormLSTMCell(3, 5, ln_eps=0.05).double()
    _randomise(cell, seed=4)
    P = dict(cell.named_parameters())
    for a, e in zip(cell(x, (h, c)), _paper_lstm_step(x, h, c, P, 0.05), strict=True):
        assert_close(a, e, rtol=0, atol=1e-12)
    gcell = LayerNormGRUCell(3, 5, ln_eps=0.05).double()
    _randomise(gcell, seed=5)
    assert_close(
        gcell(x, h), _paper_gru_step(x, h, dict(gcell.named_parameters()), 0.05), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("cls", [LayerNormLSTM, LayerNormGRU, LayerNormLSTMCell, LayerNormGRUCell])
def test_init_matches_torch_rule(cls) -> None:
    """W, b ~ U(-1/sqrt(H), 1/sqrt(H)) in every gate slice (no forget-gate bias trick); LN 1 / 0."""
    hid = 64
    m = cls(3, hid)
    bound = hid**-0.5
    for name, p in m.named_parameters():
        if name.startswith("ln_"):
            assert torch.equal(
                p, torch.ones_like(p) if "_weight" in name else torch.zeros_like(p)
            ), name
            continue
        for k, gate in enumerate(p.detach().split(hid)):  # each gate's rows / entries
            assert gate.abs().max() <= bound, f"{name} gate {k}"
            assert gate.max() - gate.min() > bound, f"{name} gate {k} is not spread over the range"
