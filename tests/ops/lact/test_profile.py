"""The shared timing code of the benchmark and the lact-utilization experiment."""

from __future__ import annotations

import pytest

from batchcraft.ops.lact import lact_flops
from batchcraft.ops.lact.profile import LaCTCase, chunk_sweep, lact_case_flops, peak_size


def test_flop_count() -> None:
    assert lact_flops(10, 2, 4, 8) == 18 * 4 * 8 * 10 * 2
    case = LaCTCase(T=64, D=8, C=16, B=2, H=3)
    assert lact_case_flops(case, backward=True) == 3 * 18 * 8 * 8 * 128 * 3
    # Muon adds 3 matrices x 5 steps x (4 m^2 n + 2 m^3) per update and head
    muon = lact_case_flops(LaCTCase(T=64, D=8, C=16, muon="tuned")) - lact_case_flops(
        LaCTCase(T=64, D=8, C=16)
    )
    assert muon == pytest.approx(3 * 5 * (4 * 8**3 + 2 * 8**3) * 4)
    assert peak_size(256) == 512


def test_chunk_sweep_rows() -> None:
    rows = chunk_sweep(
        D=8, T=64, chunks=(4, 16), impls=("chunk", "naive"), backward=(False, True), peak_gflops=10.0,
        repeat=1, warmup=0, skip=lambda impl, C, bw: impl == "naive" and C == 4,
    )  # fmt: skip
    assert [(r["C"], r["impl"], r["pass"]) for r in rows] == [
        (4, "chunk", "fwd"), (4, "chunk", "fwd+bwd"), (16, "chunk", "fwd"), (16, "chunk", "fwd+bwd"),
        (16, "naive", "fwd"), (16, "naive", "fwd+bwd"),
    ]  # fmt: skip
    for r in rows:
        assert r["seconds"] > 0 and r["% peak"] == pytest.approx(10.0 * r["GFLOP/s"])
