"""Sliding-window attention: implementations equal the dense reference; window semantics; buffer."""

from __future__ import annotations

import warnings

import pytest
import torch

from batchcraft.nn.attention import KVBuffer, attention_mask_dense, window_attention
from batchcraft.nn.rope import apply_rope, positions_from_cu_seqlens


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead (20x slower on a loaded 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _brute(q, k, v, window):
    """Loop reference written independently: query t averages keys [t-W+1, t]."""
    _b, t, _h, d = q.shape
    out = torch.zeros_like(q)
    for i in range(t):
        lo = 0 if window is None else max(0, i - window + 1)
        s = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, lo : i + 1]) / d**0.5
        p = s.softmax(-1)
        out[:, i] = torch.einsum("bhj,bjhd->bhd", p, v[:, lo : i + 1])
    return out


@pytest.mark.parametrize("window", [None, 1, 4, 16, 100], ids=lambda w: f"W{w}")
@pytest.mark.parametrize("impl", ["naive", "sdpa", "flex"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 19, 3, 6), (1, 33, 2, 60)], ids=str)
def test_impls_equal_loop_reference(window, impl, shape):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
    if impl == "flex":
        q, k, v = q.float(), k.float(), v.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = window_attention(q, k, v, window=window, impl=impl)
    ref = _brute(q.double(), k.double(), v.double(), window)
    tol = 1e-12 if q.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def test_grads_sdpa_equal_naive():
    g = torch.Generator().manual_seed(2)
    qs = [torch.randn(2, 13, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)]
    qs += [torch.randn(2, 13, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)]
    qs += [torch.randn(2, 13, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)]
    a = window_attention(*qs, window=5, impl="naive")
    ga = torch.autograd.grad(a.square().sum(), qs)
    b = window_attention(*qs, window=5, impl="sdpa")
    gb = torch.autograd.grad(b.square().sum(), qs)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_window_semantics_mask():
    m = attention_mask_dense(6, 6, window=3, device=torch.device("cpu"))[0, 0]
    assert m[5].tolist() == [False, False, False, True, True, True]
    assert m[0].tolist() == [True] + [False] * 5
    # changing a key exactly W positions back does not change the output; W-1 back does
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 8, 1, 4, generator=g) for _ in range(3))
    base = window_attention(q, k, v, window=3)
    k2 = k.clone()
    k2[0, 4] += 1.0
    out = window_attention(q, k2, v, window=3)
    assert torch.equal(out[0, 7], base[0, 7])  # 7 - 4 = 3 = W -> outside
    assert not torch.allclose(out[0, 6], base[0, 6])  # 6 - 4 = 2 < W -> inside


def test_doc_ids_isolate_documents():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 10, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    cu = torch.tensor([0, 4, 10])
    doc = torch.repeat_interleave(torch.arange(2), cu[1:] - cu[:-1])
    packed = window_attention(q, k, v, window=3, doc_ids=doc)
    a = window_attention(q[:, :4], k[:, :4], v[:, :4], window=3)
    b = window_attention(q[:, 4:], k[:, 4:], v[:, 4:], window=3)
    torch.testing.assert_close(packed, torch.cat([a, b], 1), rtol=1e-12, atol=1e-12)
    assert positions_from_cu_seqlens(cu, 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("window", [None, 4])
@pytest.mark.parametrize("splits", [[1] * 11, [3, 5, 3], [11]], ids=str)
def test_buffer_streaming_equals_one_shot(window, splits):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 11, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    full = window_attention(q, k, v, window=window)
    buf = KVBuffer.empty(2, 2, 4, window=window, like=q)
    outs, s = [], 0
    for m in splits:
        o, buf = buf.attend(q[:, s : s + m], k[:, s : s + m], v[:, s : s + m])
        outs.append(o)
        s += m
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-12, atol=1e-12)
    assert buf.position == 11
    if window is not None:
        assert buf.k.shape[1] == window - 1  # constant size
    else:
        assert buf.k.shape[1] == 11  # full attention grows


def test_rope_relative_and_errors():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def dot(pq, pk):
        a = apply_rope(q, torch.tensor([pq]), theta=100.0)
        b = apply_rope(k, torch.tensor([pk]), theta=100.0)
        return (a * b).sum()

    torch.testing.assert_close(dot(5, 2), dot(13, 10), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.randn(1, 2, 1, 3), torch.arange(2))
    with pytest.raises(ValueError, match="cover"):
        apply_rope(torch.randn(1, 2, 1, 4), torch.arange(3))


def test_bad_inputs():
    x = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="window"):
        window_attention(x, x, x, window=0)
    with pytest.raises(ValueError, match="impl"):
        window_attention(x, x, x, window=2, impl="flash9")
    with pytest.raises(ValueError, match="Tk >= Tq"):
        window_attention(x, x[:, :2], x[:, :2], window=2)
