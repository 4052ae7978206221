"""Shared inputs and comparisons for the LaCT op tests (imported as ``ops.lact.lact_cases``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact import FastWeights, LaCTState, lact


@dataclass
class Inputs:
    q: Tensor
    k: Tensor
    v: Tensor
    lr: Tensor
    beta: Tensor
    w: FastWeights

    def leaves(self, *, beta: bool = True) -> list[Tensor]:
        out = [self.q, self.k, self.v, self.lr]
        if beta:
            out.append(self.beta)
        return out + [t for t in self.w if t is not None]


def make_inputs(
    B: int,
    T: int,
    H: int,
    D: int,
    Dh: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    linear: bool = False,
    lr_scale: float = 0.1,
    requires_grad: bool = False,
    batch_weights: bool = False,
) -> Inputs:
    """Layer-like inputs: L2-normalised q, k (as the LaCT layer feeds them), lr in [0, lr_scale)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s: int) -> Tensor:
        return torch.randn(*s, generator=g, dtype=dtype)

    q = torch.nn.functional.normalize(rn(B, T, H, D), dim=-1)
    k = torch.nn.functional.normalize(rn(B, T, H, D), dim=-1)
    v = rn(B, T, H, D)
    lr = torch.rand(B, T, H, 3, generator=g, dtype=dtype) * lr_scale
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    lead = (B, H) if batch_weights else (H,)
    if linear:
        w = FastWeights(None, None, rn(*lead, D, D) / D**0.5)
    else:
        w = FastWeights(
            rn(*lead, Dh, D) / D**0.5, rn(*lead, Dh, D) / D**0.5, rn(*lead, D, Dh) / Dh**0.5
        )
    inp = Inputs(q, k, v, lr, beta, w)
    if requires_grad:
        for t in inp.leaves():
            t.requires_grad_(True)
    return inp


def run(
    impl: str, inp: Inputs, *, C: int, use_beta: bool = False, **kw: Any
) -> tuple[Tensor, LaCTState]:
    kw.setdefault("fast_weight", "linear" if inp.w.gate is None else "swiglu")
    return lact(
        inp.q,
        inp.k,
        inp.v,
        inp.lr,
        inp.w,
        chunk_size=C,
        beta=inp.beta if use_beta else None,
        impl=impl,
        **kw,
    )


def scalar_loss(o: Tensor, state: LaCTState, seed: int = 1) -> Tensor:
    """A loss touching the output and every returned weight, with fixed random weights."""
    g = torch.Generator().manual_seed(seed)
    loss = (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum()
    for t in state.weights:
        if t is not None:
            loss = loss + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return loss


def assert_states_close(a: LaCTState, b: LaCTState, *, rtol: float, atol: float) -> None:
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys(), (sorted(ta), sorted(tb))
    assert a.num_tokens == b.num_tokens
    for name in ta:
        torch.testing.assert_close(
            ta[name], tb[name], rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )
