"""LayerNorm / RMSNorm modules: torch compatibility (args, state dict, outputs) and create_norm."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import assert_close
from torch import nn

from batchcraft.nn.norm import LayerNorm, RMSNorm, create_norm


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP oversubscription on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "affine,bias", [(True, True), (True, False), (False, False)], ids=["affine", "nobias", "none"]
)
def test_layer_norm_module_matches_torch(affine: bool, bias: bool) -> None:
    ref = nn.LayerNorm((3, 10), eps=1e-6, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            if bias:
                ref.bias.normal_()
    ours = LayerNorm((3, 10), eps=1e-6, elementwise_affine=affine, bias=bias)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 10)
    assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    ours_n = LayerNorm((3, 10), eps=1e-6, elementwise_affine=affine, bias=bias, impl="naive")
    ours_n.load_state_dict(ref.state_dict())
    assert_close(ours_n(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps", [None, 1e-5], ids=["eps_none", "eps"])
def test_rms_norm_module_matches_torch(eps: float | None) -> None:
    ref = nn.RMSNorm(12, eps=eps)
    with torch.no_grad():
        ref.weight.normal_()
    ours = RMSNorm(12, eps=eps)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 12)
    assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    assert list(ours.state_dict()) == ["weight"]


def test_init_is_identity_gain_zero_shift() -> None:
    m = LayerNorm(6)
    assert torch.equal(m.weight, torch.ones(6)) and torch.equal(m.bias, torch.zeros(6))
    assert torch.equal(RMSNorm(6).weight, torch.ones(6))


def test_create_norm_by_name_class_and_partial() -> None:
    assert isinstance(create_norm("layernorm", 8), LayerNorm)
    assert isinstance(create_norm("RMSNorm", 8), RMSNorm)
    assert isinstance(create_norm("rms_norm", 8, eps=1e-6), RMSNorm)
    m = create_norm(nn.LayerNorm, 8, eps=1e-3)
    assert isinstance(m, nn.LayerNorm) and m.eps == 1e-3
    p = create_norm(functools.partial(LayerNorm, eps=1e-2), 8)
    assert isinstance(p, LayerNorm) and p.eps == 1e-2 and p.normalized_shape == (8,)


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown norm"):
        create_norm("batchnorm", 8)
    with pytest.raises(TypeError, match=r"nn\.Module class"):
        create_norm(3, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl must be one of"):
        LayerNorm(8, impl="fast")
    with pytest.raises(ValueError, match="normalized_shape"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm(8)(torch.randn(2, 7))
