"""Timing of the LaCT op shared by ``batchcraft.benchmarks.bench_lact`` and the ``lact-utilization``
experiment, and the per-component profile of a training step (``batchcraft bench lact-train --profile``).

Throughput counts ``18*D*Dh`` FLOPs per token per head for the forward pass (§3; Muon added when
on), ``3x`` that for forward+backward, and is reported as a fraction of this machine's batched
matmul peak measured in the same run (:func:`batchcraft.utils.bench.matmul_peak_gflops` on square
operands with the work of one of the op's matmuls at C = 2048, :func:`peak_size`).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from batchcraft.ops.lact.state import FastWeights

__all__ = [
    "RANGE_PREFIX",
    "LaCTCase",
    "chunk_sweep",
    "component_profile",
    "component_ranges",
    "lact_case_flops",
    "make_case",
    "op_peak_gflops",
    "peak_size",
    "prof_range",
    "time_lact",
    "time_sdpa",
]


@dataclass(frozen=True)
class LaCTCase:
    """One benchmark configuration (``Dh = D`` unless given)."""

    T: int
    D: int
    C: int
    B: int = 1
    H: int = 1
    Dh: int = 0
    muon: str | None = None

    @property
    def dh(self) -> int:
        return self.Dh or self.D

    def label(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}-D{self.D}-Dh{self.dh}-C{self.C}"


def make_case(
    case: LaCTCase,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor, Tensor, FastWeights]:
    """Layer-like inputs: unit-norm q, k; lr ~ U[0, 1e-2); W0 with 1/fan-in variance."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, D, Dh = case.B, case.T, case.H, case.D, case.dh

    def rn(*s: int) -> Tensor:
        return torch.randn(*s, generator=g, dtype=dtype).to(device)

    q = torch.nn.functional.normalize(rn(B, T, H, D), dim=-1)
    k = torch.nn.functional.normalize(rn(B, T, H, D), dim=-1)
    v = rn(B, T, H, D)
    lr = (torch.rand(B, T, H, 3, generator=g, dtype=dtype) * 1e-2).to(device)
    w = FastWeights(rn(H, Dh, D) / D**0.5, rn(H, Dh, D) / D**0.5, rn(H, D, Dh) / Dh**0.5)
    return q, k, v, lr, w


def lact_case_flops(case: LaCTCase, *, backward: bool = False) -> float:
    """Counted FLOPs of one call (forward ``18*D*Dh`` per token per head, +Muon; x3 with backward)."""
    from batchcraft.ops.lact import lact_flops

    f = lact_flops(
        case.B * case.T, case.H, case.D, case.dh, muon=case.muon is not None, chunk_size=case.C
    )
    return 3.0 * f if backward else f


def _timed(fn: Callable[[], Any], repeat: int, warmup: int, device: Any) -> dict[str, float]:
    from batchcraft.utils.bench import timeit

    t = timeit(fn, warmup=warmup, repeat=repeat, device=device)
    return {"median_s": t["median_s"], "min_s": t["min_s"]}


def time_lact(
    case: LaCTCase,
    *,
    impl: str = "chunk",
    backward: bool = False,
    repeat: int = 2,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    **kw: Any,
) -> dict[str, Any]:
    """Time ``lact`` (forward under ``no_grad``, or forward+backward w.r.t. q, k, v, lr and W0).

    Returns:
        ``{"seconds", "gflops", "tokens_per_s", ...}`` using the best of ``repeat`` runs.
    """
    from batchcraft.ops.lact import lact

    q, k, v, lr, w = make_case(case, device=device)
    if backward:
        leaves = [q, k, v, lr, *[t for t in w if t is not None]]
        for t in leaves:
            t.requires_grad_(True)
        grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)

        def fn() -> None:
            o, _ = lact(q, k, v, lr, w, chunk_size=case.C, muon=case.muon, impl=impl, **kw)
            torch.autograd.grad(o, leaves, grad_out)

    else:

        def fn() -> None:
            with torch.no_grad():
                lact(q, k, v, lr, w, chunk_size=case.C, muon=case.muon, impl=impl, **kw)

    tm = _timed(fn, repeat, warmup, device)
    flops = lact_case_flops(case, backward=backward)
    return {
        "seconds": tm["min_s"],
        "median_s": tm["median_s"],
        "gflops": flops / tm["min_s"] / 1e9,
        "tokens_per_s": case.B * case.T / tm["min_s"],
    }


def time_sdpa(
    *,
    B: int,
    T: int,
    H: int,
    D: int,
    backward: bool = False,
    repeat: int = 2,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Causal full attention (``scaled_dot_product_attention``) at the same shape: the quadratic peer.

    FLOPs counted: ``2*T*T*D`` per head (QK^T and PV over the causal half), x3 with backward.
    """
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)

        def fn() -> None:
            o = sdpa(q, k, v, is_causal=True)
            torch.autograd.grad(o.sum(), [q, k, v])

    else:

        def fn() -> None:
            with torch.no_grad():
                sdpa(q, k, v, is_causal=True)

    tm = _timed(fn, repeat, warmup, device)
    flops = 2.0 * T * T * D * B * H * (3 if backward else 1)
    return {
        "seconds": tm["min_s"],
        "gflops": flops / tm["min_s"] / 1e9,
        "tokens_per_s": B * T / tm["min_s"],
    }


def op_peak_gflops(D: int, *, device: str | torch.device = "cpu", repeat: int = 5) -> float:
    """Batched fp32 matmul peak (:func:`matmul_peak_gflops`, batch 8) on square operands with the
    work of one of the op's matmuls at C = 2048 (:func:`peak_size`)."""
    from batchcraft.utils.bench import matmul_peak_gflops

    return matmul_peak_gflops(batch=8, size=peak_size(D), device=device, repeat=repeat)


def peak_size(D: int, Dh: int | None = None, C: int = 2048) -> int:
    """Square size with the work of one of the op's matmuls at chunk ``C``: ``round((C*D*Dh)^(1/3))``
    (512 for C = 2048, D = Dh = 256)."""
    return round((C * D * (Dh or D)) ** (1 / 3))


def chunk_sweep(
    *,
    D: int,
    T: int,
    chunks: Sequence[int],
    impls: Sequence[str] = ("chunk",),
    backward: Sequence[bool] = (False,),
    peak_gflops: float,
    B: int = 1,
    H: int = 1,
    muon: str | None = None,
    repeat: int = 2,
    warmup: int = 1,
    skip: Callable[[str, int, bool], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Time the op over chunk sizes; one row per (C, impl, pass) with GFLOP/s and % of ``peak_gflops``.

    Args:
        skip: ``skip(impl, C, backward) -> True`` leaves a combination out (e.g. slow references).
        log: progress callback.
    """
    rows: list[dict[str, Any]] = []
    for C in chunks:
        for impl in impls:
            for bw in backward:
                if skip is not None and skip(impl, C, bw):
                    continue
                case = LaCTCase(T=T, D=D, C=C, B=B, H=H, muon=muon)
                r = time_lact(
                    case, impl=impl, backward=bw, repeat=repeat if not bw else 1, warmup=warmup
                )
                row = {
                    "D": D,
                    "C": C,
                    "impl": impl,
                    "pass": "fwd+bwd" if bw else "fwd",
                    "seconds": r["seconds"],
                    "GFLOP/s": r["gflops"],
                    "% peak": 100.0 * r["gflops"] / peak_gflops,
                    "tokens/s": r["tokens_per_s"],
                }
                rows.append(row)
                if log is not None:
                    log(
                        f"D={D} C={C} {impl} {row['pass']}: {r['seconds']:.3f} s, {r['gflops']:.1f} GFLOP/s"
                    )
    return rows


# ------------------------------------------------------------------ per-component step profile
RANGE_PREFIX = "bc::"  # profiler ranges of :func:`prof_range` are named "bc::<component>"
_ranges_on = False
_NULL = contextlib.nullcontext()


def prof_range(name: str) -> AbstractContextManager[Any]:
    """A profiler range ``bc::<name>`` while :func:`component_ranges` is on, else a shared no-op.

    Model code wraps its components in ``with prof_range("mlp"): ...``; when not profiling this
    costs one global lookup (no profiler call in the hot path).
    """
    if not _ranges_on:
        return _NULL
    return torch.profiler.record_function(RANGE_PREFIX + name)


@contextlib.contextmanager
def component_ranges(enabled: bool = True) -> Iterator[None]:
    """Turn the :func:`prof_range` ranges on (or off) inside the ``with`` block."""
    global _ranges_on
    old, _ranges_on = _ranges_on, enabled
    try:
        yield
    finally:
        _ranges_on = old


_BWD = "autograd::engine::evaluate_function: "


def _component_times(events: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Forward and backward microseconds per component from profiler events.

    Forward: the exclusive time of each ``bc::`` range (its span minus nested ranges).
    Backward: every autograd node evaluation is charged to the range whose forward op created
    the node (matched by the autograd sequence number); nodes of no range (gradient
    accumulation into leaves, ops outside every range) go to ``"(backward, other)"``.
    """
    evs = list(events)
    ranges = [e for e in evs if e.name.startswith(RANGE_PREFIX)]

    def enclosing_range(e: Any) -> Any:
        p = e.cpu_parent
        while p is not None and not p.name.startswith(RANGE_PREFIX):
            if p.name.startswith(_BWD):
                return None  # an op run by backward (e.g. a checkpoint recompute)
            p = p.cpu_parent
        return p

    fwd: dict[str, float] = defaultdict(float)
    for r in ranges:
        if _in_backward(r):
            continue  # a range re-entered by a checkpoint recompute: charged to backward
        inner = sum(c.time_range.elapsed_us() for c in _child_ranges(r))
        fwd[r.name[len(RANGE_PREFIX) :]] += r.time_range.elapsed_us() - inner
    seq_owner: dict[int, str] = {}  # autograd sequence number -> component that created the node
    for e in evs:
        if e.sequence_nr >= 0 and e.sequence_nr not in seq_owner and not e.name.startswith(_BWD):
            r = enclosing_range(e)
            if r is not None:
                seq_owner[e.sequence_nr] = r.name[len(RANGE_PREFIX) :]
    bwd: dict[str, float] = defaultdict(float)
    for e in evs:
        if not e.name.startswith(_BWD) or _in_backward(e):
            continue  # nested evaluations are inside an outer one already
        bwd[seq_owner.get(e.sequence_nr, "(backward, other)")] += e.time_range.elapsed_us()
    return dict(fwd), dict(bwd)


def _in_backward(e: Any) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith(_BWD):
            return True
        p = p.cpu_parent
    return False


def _child_ranges(r: Any) -> Iterator[Any]:
    """The outermost ``bc::`` ranges nested inside ``r``."""
    for c in r.cpu_children:
        if c.name.startswith(RANGE_PREFIX):
            yield c
        else:
            yield from _child_ranges(c)


def component_profile(step: Callable[[], Any], *, warmup: int = 1) -> dict[str, Any]:
    """Where the time of one call of ``step`` goes, per :func:`prof_range` component.

    ``step`` runs ``warmup`` times unprofiled, once timed unprofiled (``wall_s``) and once under
    ``torch.profiler`` with the ranges on (``profiled_s``; the profiler's per-op overhead makes
    it longer, most for code with many small ops).

    Returns:
        ``{"rows": [{"component", "fwd_ms", "bwd_ms", "total_ms", "share"}], "wall_s",
        "profiled_s"}``; rows sorted by total time, plus ``"(unattributed)"``: the profiled
        time outside every range and every backward node (Python, autograd engine, profiler).
    """
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    step()
    wall = time.perf_counter() - t0
    activities = [torch.profiler.ProfilerActivity.CPU]
    with component_ranges(), torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        step()
        profiled = time.perf_counter() - t0
    fwd, bwd = _component_times(prof.events())
    names = sorted(set(fwd) | set(bwd), key=lambda n: -(fwd.get(n, 0.0) + bwd.get(n, 0.0)))
    rows: list[dict[str, Any]] = [
        {
            "component": n,
            "fwd_ms": fwd.get(n, 0.0) / 1e3,
            "bwd_ms": bwd.get(n, 0.0) / 1e3,
            "total_ms": (fwd.get(n, 0.0) + bwd.get(n, 0.0)) / 1e3,
        }
        for n in names
    ]
    rest = profiled * 1e3 - sum(r["total_ms"] for r in rows)
    rows.append({"component": "(unattributed)", "fwd_ms": 0.0, "bwd_ms": 0.0, "total_ms": rest})
    for r in rows:
        r["share"] = r["total_ms"] / (profiled * 1e3)
    return {"rows": rows, "wall_s": wall, "profiled_s": profiled}
