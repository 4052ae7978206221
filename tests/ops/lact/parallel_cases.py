"""Chunk-parallel op cases, run inside gloo ranks (imported as ``ops.lact.parallel_cases``).

Every rank builds the same global inputs, runs the single-process op on them (the reference) and
the chunk-parallel op on its own tokens, and records the largest relative error of the output,
every gradient (local tokens: exact on their rank; initial weights: summed over ranks) and the
final state. ``run_op_cases`` writes ``{case id: {quantity: error}}`` to ``out/rank{r}.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from ops.lact.lact_cases import make_inputs
from torch import Tensor

from batchcraft.ops.lact import FastWeights, TTTOp, lact
from batchcraft.ops.lact.parallel import chunk_positions

B, H, D, DH, C = 2, 2, 8, 12, 8


@dataclass(frozen=True)
class OpCase:
    schedule: str  # "causal", "bidirectional" or "two_updates" (explicit, uneven slices)
    momentum: bool
    muon: str | None
    norm: str | None = "post"
    recompute: bool = False

    @property
    def id(self) -> str:
        return f"{self.schedule}-mom{int(self.momentum)}-muon_{self.muon}-norm_{self.norm}" + (
            "-recompute" if self.recompute else ""
        )


OP_CASES = [
    *(OpCase("causal", m, mu) for m in (False, True) for mu in (None, "tuned")),
    OpCase("causal", True, "tuned", "pre"),
    OpCase("causal", True, None, None, recompute=True),
    *(OpCase("bidirectional", False, mu) for mu in (None, "tuned", "classic")),
    OpCase("bidirectional", True, "classic", "pre"),
    *(OpCase("two_updates", True, mu) for mu in (None, "tuned")),
]


def rel_err(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max(max |b|, 1e-3)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-3))


def _layout(case: OpCase, rank: int, world: int) -> tuple[int, Tensor, list, list]:
    """(global T, this rank's global token indices, global op list, local op list)."""
    if case.schedule == "causal":
        T = 3 * C + world * 1  # three complete chunks and a tail of one token per rank
        idx = chunk_positions(T // world, C, rank, world)
        return T, idx, [], []
    sizes = [5 + 4 * r for r in range(world)]  # uneven slices: 5, 9, ...
    if case.schedule == "bidirectional":
        T = sum(sizes)
        start = sum(sizes[:rank])
        idx = torch.arange(start, start + sizes[rank])
        return (
            T,
            idx,
            [TTTOp("update", 0, T), TTTOp("apply", 0, T)],
            [
                TTTOp("update", 0, sizes[rank]),
                TTTOp("apply", 0, sizes[rank]),
            ],
        )
    # two updates over uneven parts: global order [A_0, A_1, ..., B_0, B_1, ...]
    a = [2 + r for r in range(world)]
    b = [s - x for s, x in zip(sizes, a, strict=True)]
    T, HA = sum(sizes), sum(a)
    first = torch.arange(sum(a[:rank]), sum(a[: rank + 1]))
    second = HA + torch.arange(sum(b[:rank]), sum(b[: rank + 1]))
    idx = torch.cat([first, second])
    glob = [TTTOp("update", 0, HA), TTTOp("apply_update", HA, T), TTTOp("apply", 0, HA)]
    n, h = sizes[rank], a[rank]
    loc = [TTTOp("update", 0, h), TTTOp("apply_update", h, n), TTTOp("apply", 0, h)]
    return T, idx, glob, loc


def op_case_errors(case: OpCase, rank: int, world: int) -> dict[str, float]:
    T, idx, glob_ops, loc_ops = _layout(case, rank, world)
    inp = make_inputs(B, T, H, D, DH, seed=7)
    g = torch.Generator().manual_seed(11)
    cot = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    kw = dict(
        chunk_size=C,
        muon=case.muon,
        weight_norm=case.norm,
        recompute=case.recompute,
        use_momentum=case.momentum,
        impl="chunk",
    )

    def call(q, k, v, lr, beta, w, ops, group):
        sched = "causal" if case.schedule == "causal" else ops
        return lact(
            q, k, v, lr, w, beta=beta if case.momentum else None, schedule=sched, group=group,
            **kw,
        )  # fmt: skip

    # reference: one process on the whole sequence
    ref_in = [t.clone().requires_grad_(True) for t in (inp.q, inp.k, inp.v, inp.lr, inp.beta)]
    ref_w = [t.clone().requires_grad_(True) for t in inp.w]
    o_ref, st_ref = call(*ref_in, FastWeights(*ref_w), glob_ops, None)
    leaves_ref = ref_in[:4] + ([ref_in[4]] if case.momentum else []) + ref_w
    g_ref = torch.autograd.grad((o_ref * cot).sum(), leaves_ref)

    # this rank's tokens
    loc_in = [t.index_select(1, idx).clone().requires_grad_(True) for t in ref_in]
    loc_w = [t.detach().clone().requires_grad_(True) for t in inp.w]
    o, st = call(*loc_in, FastWeights(*loc_w), loc_ops, dist.group.WORLD)
    leaves = loc_in[:4] + ([loc_in[4]] if case.momentum else []) + loc_w
    grads = list(torch.autograd.grad((o * cot.index_select(1, idx)).sum(), leaves))
    n_tok = 5 if case.momentum else 4
    for i in range(n_tok, len(grads)):  # replicated initial weights: partial per rank
        dist.all_reduce(grads[i])

    names = [*["q", "k", "v", "lr", "beta"][:n_tok], "w_gate", "w_up", "w_down"]
    errs = {"o": rel_err(o, o_ref.index_select(1, idx))}
    for i, name in enumerate(names):
        want = g_ref[i].index_select(1, idx) if i < n_tok else g_ref[i]
        errs[f"grad_{name}"] = rel_err(grads[i], want)
    for name, t in st_ref.tensors().items():
        if not name.startswith("pending"):
            errs[f"state.{name}"] = rel_err(st.tensors()[name], t)
    errs["num_tokens"] = float(st.num_tokens != len(idx))
    return errs


def bf16_case_errors(rank: int, world: int) -> dict[str, float]:
    """bf16 inputs (impl "auto": fp32 state, bf16 matmuls): relative RMS error of the 2-rank op
    against the one-process op, output and final weights (shares are summed in fp32)."""
    T = 3 * C + world * 1
    idx = chunk_positions(T // world, C, rank, world)
    inp = make_inputs(B, T, H, D, DH, dtype=torch.float32, seed=9)
    q, k, v = (t.to(torch.bfloat16) for t in (inp.q, inp.k, inp.v))
    # no Muon: Newton-Schulz of these rank-deficient updates (C < D) amplifies bf16 noise
    o_ref, st_ref = lact(q, k, v, inp.lr, inp.w, chunk_size=C, beta=inp.beta)
    sel = [t.index_select(1, idx) for t in (q, k, v, inp.lr, inp.beta)]
    o, st = lact(*sel[:4], inp.w, chunk_size=C, beta=sel[4], group=dist.group.WORLD)

    def rms(a: Tensor, b: Tensor) -> float:
        a, b = a.double(), b.double()
        return float((a - b).norm() / b.norm())

    errs = {"o": rms(o, o_ref.index_select(1, idx)), "dtype_ok": float(o.dtype != torch.bfloat16)}
    for part, a, b in zip(("gate", "up", "down"), st.weights, st_ref.weights, strict=True):
        errs[f"weights.{part}"] = rms(a, b)
    return errs


def run_op_cases(rank: int, world: int, out: str) -> None:
    res = {case.id: op_case_errors(case, rank, world) for case in OP_CASES}
    res["bf16"] = bf16_case_errors(rank, world)
    # error paths that need a live group
    try:
        lact(*(torch.zeros(1, 4, 1, 2) for _ in range(3)), torch.zeros(1, 4, 1, 3),
             FastWeights(*(torch.eye(2)[None] for _ in range(3))), chunk_size=3,
             group=dist.group.WORLD)  # fmt: skip
        res["error_chunk_divisible"] = {"raised": 0.0}
    except ValueError as e:
        res["error_chunk_divisible"] = {"raised": float("divisible" not in str(e))}
    try:  # ranks disagree on the local length (checked with check=True)
        t = 4 + 2 * rank
        lact(*(torch.randn(1, t, 1, 2) for _ in range(3)), torch.zeros(1, t, 1, 3),
             FastWeights(*(torch.eye(2)[None] for _ in range(3))), chunk_size=4, check=True,
             group=dist.group.WORLD)  # fmt: skip
        res["error_ranks_disagree"] = {"raised": 0.0}
    except ValueError as e:
        res["error_ranks_disagree"] = {"raised": float("disagree" not in str(e))}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
