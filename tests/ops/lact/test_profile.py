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


def test_prof_range_is_a_shared_no_op_unless_profiling() -> None:
    from batchcraft.ops.lact.profile import component_ranges, prof_range

    assert prof_range("a") is prof_range("b")  # nothing is created in the hot path
    with component_ranges():
        assert prof_range("a") is not prof_range("a")
    assert prof_range("a") is prof_range("b")


def test_component_profile_charges_forward_and_backward_to_components() -> None:
    """One tiny LM training step: the op, attention and MLP get forward AND backward time (the
    backward by autograd sequence number), nothing is negative, and the rows add up to the
    profiled step."""
    import torch

    from batchcraft.models import LaCTForCausalLM
    from batchcraft.models.lact_config import lact_tiny
    from batchcraft.ops.lact.profile import component_profile

    torch.manual_seed(0)
    model = LaCTForCausalLM(lact_tiny(chunk_size=8, window_size=8))
    ids = torch.randint(0, 256, (1, 33), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        out = model(ids, labels=ids)
        assert out.loss is not None
        out.loss.backward()

    res = component_profile(step)
    rows = {r["component"]: r for r in res["rows"]}
    for name in ("ttt.op", "ttt.prep", "attn", "mlp", "qkv", "o_proj", "lm_head", "loss"):
        assert rows[name]["fwd_ms"] > 0 and rows[name]["bwd_ms"] > 0, name
    assert all(r["fwd_ms"] >= 0 and r["bwd_ms"] >= 0 for r in res["rows"])
    total = sum(r["total_ms"] for r in res["rows"])
    assert total == pytest.approx(1e3 * res["profiled_s"], rel=1e-6)
    assert sum(r["share"] for r in res["rows"]) == pytest.approx(1.0)
