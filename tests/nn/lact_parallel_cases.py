"""Chunk-parallel layer cases, run inside gloo ranks (imported as ``nn.lact_parallel_cases``).

Every rank builds the same layer and global input, runs the layer on the whole sequence in one
process (the reference), then the same layer with ``cp_group`` on its own tokens, and records
the largest relative error of the output, the input gradient (exact on its rank) and every
parameter gradient (summed over ranks, as DDP/FSDP would). ``run_layer_cases`` writes
``{case id: {quantity: error}}`` to ``out/rank{r}.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from batchcraft.nn.bidirectional_lact import BidirectionalLaCTLayer
from batchcraft.nn.lact import LaCTLayer
from batchcraft.ops.lact.parallel import chunk_positions

C = 8


@dataclass(frozen=True)
class LayerCase:
    kind: str  # "causal" or "set"
    window: int | None = 8  # causal: attention window (None full, 0 none)
    muon: bool = False
    momentum: bool = True

    @property
    def id(self) -> str:
        if self.kind == "set":
            return f"set-muon{int(self.muon)}"
        return f"causal-W{self.window}-muon{int(self.muon)}-mom{int(self.momentum)}"


LAYER_CASES = [
    LayerCase("causal", 8, False, True),
    LayerCase("causal", 12, True, True),
    LayerCase("causal", None, False, False),
    LayerCase("causal", 0, True, True),
    LayerCase("set", muon=False),
    LayerCase("set", muon=True),
]


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-3))


def _layer(case: LayerCase) -> torch.nn.Module:
    torch.manual_seed(3)
    if case.kind == "set":
        return BidirectionalLaCTLayer(32, 16, use_muon=case.muon).double()
    return LaCTLayer(
        32, 2, num_attn_heads=4, chunk_size=C, window_size=case.window, use_muon=case.muon,
        use_momentum=case.momentum, init="full",
    ).double()  # fmt: skip


def layer_case_errors(case: LayerCase, rank: int, world: int) -> dict[str, float]:
    layer = _layer(case)
    if case.kind == "set":
        sizes = [6 + 5 * r for r in range(world)]  # uneven slices of the set
        T = sum(sizes)
        idx = torch.arange(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    else:
        T = 3 * C + world * 2  # three chunks and a tail of two tokens per rank
        idx = chunk_positions(T // world, C, rank, world)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, T, 32, generator=g, dtype=torch.float64)
    cot = torch.randn(2, T, 32, generator=g, dtype=torch.float64)
    params = list(layer.parameters())

    xr = x.clone().requires_grad_(True)
    y_ref = layer(xr)[0]
    g_ref = torch.autograd.grad((y_ref * cot).sum(), [xr, *params])

    layer.cp_group = dist.group.WORLD
    xl = x.index_select(1, idx).clone().requires_grad_(True)
    y, extra = layer(xl)
    grads = list(torch.autograd.grad((y * cot.index_select(1, idx)).sum(), [xl, *params]))
    for gr in grads[1:]:
        dist.all_reduce(gr)
    errs = {
        "y": rel_err(y, y_ref.index_select(1, idx)),
        "grad_x": rel_err(grads[0], g_ref[0].index_select(1, idx)),
    }
    names = [n for n, _ in layer.named_parameters()]
    for n, a, b in zip(names, grads[1:], g_ref[1:], strict=True):
        errs[f"grad_{n}"] = rel_err(a, b)
    if case.kind == "set":  # the fast weights after the update are the same on every rank
        layer.cp_group = None
        _, w_ref = layer(x)
        for part, a, b in zip(("gate", "up", "down"), extra, w_ref, strict=True):
            errs[f"weights.{part}"] = rel_err(a, b)
    return errs


def run_layer_cases(rank: int, world: int, out: str) -> None:
    res = {case.id: layer_case_errors(case, rank, world) for case in LAYER_CASES}
    layer = _layer(LayerCase("causal"))
    layer.cp_group = dist.group.WORLD
    try:
        layer(torch.randn(1, 4, 32, dtype=torch.float64), use_cache=True)
        res["error_cache"] = {"raised": 0.0}
    except ValueError as e:
        res["error_cache"] = {"raised": float("cp_group" not in str(e))}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
