"""LN-LSTM / LN-GRU ops vs step-by-step fp64 equations written here; hoisted == naive; invariances."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import assert_close

from batchcraft.ops.recurrent import GRUParams, LSTMParams, ln_gru, ln_lstm


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


T, B, I, H = 6, 3, 5, 4


def _rand(g: torch.Generator, *shape: int, scale: float = 0.5) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def lstm_params(seed: int, bias: bool = True, ln: bool = True) -> LSTMParams:
    g = torch.Generator().manual_seed(seed)
    p = LSTMParams(_rand(g, 4 * H, I), _rand(g, 4 * H, H))
    if bias:
        p.bias_ih, p.bias_hh = _rand(g, 4 * H), _rand(g, 4 * H)
    if ln:  # non-trivial gains and shifts so every LN parameter matters
        p.ln_ih_weight, p.ln_ih_bias = _rand(g, 4 * H) + 1, _rand(g, 4 * H)
        p.ln_hh_weight, p.ln_hh_bias = _rand(g, 4 * H) + 1, _rand(g, 4 * H)
        p.ln_c_weight, p.ln_c_bias = _rand(g, H) + 1, _rand(g, H)
    for f in dataclasses.fields(p):
        t = getattr(p, f.name)
        if t is not None:
            setattr(p, f.name, t.detach().requires_grad_(True))
    return p


def gru_params(seed: int, bias: bool = True, ln: bool = True) -> GRUParams:
    g = torch.Generator().manual_seed(seed)
    p = GRUParams(_rand(g, 3 * H, I), _rand(g, 3 * H, H))
    if bias:
        p.bias_ih, p.bias_hh = _rand(g, 3 * H), _rand(g, 3 * H)
    if ln:
        for name, n in (("ln_ih_rz", 2), ("ln_ih_n", 1), ("ln_hh_rz", 2), ("ln_hh_n", 1)):
            setattr(p, f"{name}_weight", _rand(g, n * H) + 1)
            setattr(p, f"{name}_bias", _rand(g, n * H))
    for f in dataclasses.fields(p):
        t = getattr(p, f.name)
        if t is not None:
            setattr(p, f.name, t.detach().requires_grad_(True))
    return p


def LN(v: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = v.mean(-1, keepdim=True)
    sd = torch.sqrt(((v - mu) ** 2).mean(-1, keepdim=True) + eps)
    return (v - mu) / sd * w + b


def eq_lstm(x, h, c, p: LSTMParams, per_gate: bool = False, eps: float = 1e-5):
    """Supplement eqs. 20-22 literally (per_gate: TF1 LayerNormBasicLSTMCell-style variant)."""
    outs = []
    for t in range(x.shape[0]):
        wx, wh = x[t] @ p.weight_ih.T, h @ p.weight_hh.T
        if per_gate:
            lx = torch.cat(
                [
                    LN(
                        wx[:, k * H : (k + 1) * H],
                        p.ln_ih_weight[k * H : (k + 1) * H],
                        p.ln_ih_bias[k * H : (k + 1) * H],
                        eps,
                    )
                    for k in range(4)
                ],
                -1,
            )
            lh = torch.cat(
                [
                    LN(
                        wh[:, k * H : (k + 1) * H],
                        p.ln_hh_weight[k * H : (k + 1) * H],
                        p.ln_hh_bias[k * H : (k + 1) * H],
                        eps,
                    )
                    for k in range(4)
                ],
                -1,
            )
        else:
            lx, lh = (
                LN(wx, p.ln_ih_weight, p.ln_ih_bias, eps),
                LN(wh, p.ln_hh_weight, p.ln_hh_bias, eps),
            )
        a = lh + lx + p.bias_ih + p.bias_hh
        i, f, gg, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        cn = LN(c, p.ln_c_weight, p.ln_c_bias, eps)
        h = torch.sigmoid(o) * torch.tanh(cn)
        if per_gate:
            c = cn
        outs.append(h)
    return torch.stack(outs), h, c


def eq_gru(x, h, p: GRUParams, eps: float = 1e-5):
    outs = []
    for t in range(x.shape[0]):
        wx, wh = x[t] @ p.weight_ih.T, h @ p.weight_hh.T
        bi, bh = p.bias_ih, p.bias_hh
        rz = torch.sigmoid(
            LN(wx[:, : 2 * H], p.ln_ih_rz_weight, p.ln_ih_rz_bias, eps)
            + LN(wh[:, : 2 * H], p.ln_hh_rz_weight, p.ln_hh_rz_bias, eps)
            + bi[: 2 * H]
            + bh[: 2 * H]
        )
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(
            LN(wx[:, 2 * H :], p.ln_ih_n_weight, p.ln_ih_n_bias, eps)
            + bi[2 * H :]
            + r * (LN(wh[:, 2 * H :], p.ln_hh_n_weight, p.ln_hh_n_bias, eps) + bh[2 * H :])
        )
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return tuple(_rand(g, *s, scale=1.0) for s in ((T, B, I), (B, H), (B, H)))


@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("impl", ["naive", "hoisted", "fused"])
@pytest.mark.parametrize("variant", ["paper", "per_gate"])
def test_ln_lstm_matches_equations(impl: str, variant: str, eps: float) -> None:
    x, h0, c0 = _inputs(0)
    p = lstm_params(1)
    out, (h, c) = ln_lstm(x, (h0, c0), p, impl=impl, variant=variant, eps=eps)
    e_out, e_h, e_c = eq_lstm(x, h0, c0, p, per_gate=variant == "per_gate", eps=eps)
    for a, b in ((out, e_out), (h, e_h), (c, e_c)):
        assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("impl", ["naive", "hoisted", "fused"])
def test_ln_gru_matches_equations(impl: str, eps: float) -> None:
    x, h0, _ = _inputs(2)
    p = gru_params(3)
    out, h = ln_gru(x, h0, p, impl=impl, eps=eps)
    e_out, e_h = eq_gru(x, h0, p, eps=eps)
    assert_close(out, e_out, rtol=0, atol=1e-10)
    assert_close(h, e_h, rtol=0, atol=1e-10)


def _all_grads(outs: tuple[torch.Tensor, ...], leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    return list(torch.autograd.grad(loss, leaves))


CASES = [
    ("plain", False, None),
    ("reverse", True, None),
    ("lengths", False, [6, 2, 4]),
    ("lengths_reverse", True, [1, 6, 3]),
]


@pytest.mark.parametrize("name,reverse,lengths", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("layer_norm", [True, False], ids=["ln", "noln"])
@pytest.mark.parametrize("variant", ["paper", "per_gate"])
@pytest.mark.parametrize("fast", ["hoisted", "fused"])
def test_fast_paths_equal_naive_with_grads(
    name: str,
    reverse: bool,
    lengths: list[int] | None,
    mode: str,
    layer_norm: bool,
    variant: str,
    fast: str,
) -> None:
    x, h0, c0 = _inputs(4)
    lens = None if lengths is None else torch.tensor(lengths)
    res = []
    for impl in ("naive", fast):
        kw = {
            "layer_norm": layer_norm,
            "lengths": lens,
            "reverse": reverse,
            "impl": impl,
            "variant": variant,
        }
        if mode == "lstm":
            p = lstm_params(5, ln=layer_norm)
            out, (h, c) = ln_lstm(x, (h0, c0), p, **kw)
            outs, leaves = (out, h, c), [x, h0, c0, *p.tensors()]
        else:
            p = gru_params(5, ln=layer_norm)
            out, h = ln_gru(x, h0, p, **kw)
            outs, leaves = (out, h), [x, h0, *p.tensors()]
        res.append(list(outs) + _all_grads(outs, leaves))
    for i, (a, b) in enumerate(zip(*res, strict=True)):
        assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name}: output/grad #{i}")
    if lens is not None:  # padded positions output zeros
        out = res[0][0]
        for bi, n in enumerate(lengths or []):
            assert out[n:, bi].abs().max() == 0 if n < T else True


def test_ln_c_exists_and_matters() -> None:
    """Regression (spec §3.5): the cell LN is part of the output path."""
    x, h0, c0 = _inputs(6)
    p = lstm_params(7)
    out, _ = ln_lstm(x, (h0, c0), p)
    with torch.no_grad():
        p.ln_c_weight.mul_(2.0)
    out2, (_, _c2) = ln_lstm(x, (h0, c0), p)
    assert (out - out2).abs().max() > 1e-3
    _, (_, c1) = ln_lstm(x, (h0, c0), lstm_params(7))
    assert c1.abs().max() > 0  # raw cell carried: not equal to its normalised value
    assert (c1 - torch.nn.functional.layer_norm(c1, (H,))).abs().max() > 1e-3


def test_weight_matrix_rescaling_invariance_and_negative_case() -> None:
    """Paper Table 1: LN-LSTM is invariant to scaling the whole W_ih and W_hh, not one row."""
    x, h0, c0 = _inputs(8)
    p = lstm_params(9)
    out, _ = ln_lstm(x, (h0, c0), p, eps=1e-12)
    q = dataclasses.replace(p, weight_ih=p.weight_ih * 3.0, weight_hh=p.weight_hh * 0.25)
    out_s, _ = ln_lstm(x, (h0, c0), q, eps=1e-12)
    assert_close(out_s, out, rtol=0, atol=1e-9)
    w_hh = p.weight_hh.detach().clone()
    w_hh[2] *= 5.0
    out_r, _ = ln_lstm(x, (h0, c0), dataclasses.replace(p, weight_hh=w_hh), eps=1e-12)
    assert (out_r - out).abs().max() > 1e-3


def test_gradcheck_tiny() -> None:
    g = torch.Generator().manual_seed(10)
    x = _rand(g, 2, 2, I)
    h0, c0 = _rand(g, 2, H), _rand(g, 2, H)
    p = lstm_params(11)
    leaves = [x, h0, c0, *p.tensors()]

    for impl in ("hoisted", "fused"):

        def f(*ts: torch.Tensor, impl: str = impl):
            q = LSTMParams(*ts[3:])
            out, (h, c) = ln_lstm(ts[0], (ts[1], ts[2]), q, impl=impl)
            return out, h, c

        assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5, fast_mode=True), impl
    pg = gru_params(12)

    for impl in ("hoisted", "fused"):

        def fg(*ts: torch.Tensor, impl: str = impl):
            out, h = ln_gru(ts[0], ts[1], GRUParams(*ts[2:]), impl=impl)
            return out, h

        assert torch.autograd.gradcheck(
            fg, [x, h0, *pg.tensors()], eps=1e-6, atol=1e-5, fast_mode=True
        ), impl


def test_errors() -> None:
    x, h0, c0 = _inputs(13)
    p = lstm_params(14)
    with pytest.raises(ValueError, match=r"time-major \[T, B, I\]"):
        ln_lstm(x[0], (h0, c0), p)
    with pytest.raises(ValueError, match="state must be"):
        ln_lstm(x, (h0[:2], c0), p)
    with pytest.raises(ValueError, match="weight_ih"):
        ln_lstm(x[..., :3], (h0, c0), p)
    with pytest.raises(ValueError, match="variant must be one of"):
        ln_lstm(x, (h0, c0), p, variant="tf")
    with pytest.raises(ValueError, match="impl must be one of"):
        ln_gru(x, h0, gru_params(1), impl="cudnn")
    with pytest.raises(ValueError, match="weight_ih"):
        ln_gru(x, h0, lstm_params(1))  # type: ignore[arg-type]
