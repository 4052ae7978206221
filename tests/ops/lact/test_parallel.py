"""Chunk-parallel LaCT on 2 gloo ranks equals the single-process op (fp64): outputs, every
gradient (q, k, v, lr, beta and the initial weights) and the final state, for the causal and
bidirectional schedules, with and without momentum and Muon."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import spawn_gloo
from ops.lact.parallel_cases import OP_CASES, run_op_cases

from batchcraft.ops.lact import FastWeights, lact
from batchcraft.ops.lact.parallel import chunk_positions, shard_chunks, unshard_chunks

TOL = 1e-10  # fp64; only the order of the float sums differs from one process


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("lact_parallel")
    spawn_gloo(run_op_cases, 2, str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.id)
def test_chunk_parallel_equals_one_process(results, case):
    for rank, res in enumerate(results):
        errs = res[case.id]
        assert "grad_w_down" in errs and "o" in errs
        if case.momentum:
            assert "grad_beta" in errs and "state.momentum.down" in errs
        bad = {k: v for k, v in errs.items() if not v <= TOL}
        assert not bad, f"rank {rank}: {bad}"


def test_chunk_parallel_bf16_close_to_one_process(results):
    # both sides run bf16 matmuls with fp32 state; the 2-rank op sums its shares in fp32, so
    # only bf16 rounding of the partial products differs (the bf16 path's own tolerance: 2e-2)
    for res in results:
        errs = res["bf16"]
        assert errs["dtype_ok"] == 0.0
        assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize("name", ["error_chunk_divisible", "error_ranks_disagree"])
def test_chunk_parallel_errors_on_every_rank(results, name):
    assert all(res[name]["raised"] == 0.0 for res in results)


def test_layout_round_trip_and_positions():
    x = torch.arange(2 * 26).reshape(2, 26)  # 3 chunks of 8 + a tail of 2 (1 per rank)
    parts = [shard_chunks(x, 8, r, 2) for r in range(2)]
    assert parts[0][0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24]
    assert parts[1][0].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 25]
    assert torch.equal(unshard_chunks(parts, 8), x)
    pos = torch.cat([chunk_positions(13, 8, r, 2) for r in range(2)])
    assert sorted(pos.tolist()) == list(range(26))


def test_errors_without_a_live_group():
    q = torch.zeros(1, 4, 1, 2)
    w = FastWeights(*(torch.eye(2)[None] for _ in range(3)))
    lr = torch.zeros(1, 4, 1, 3)
    with pytest.raises(ValueError, match="cu_seqlens"):
        lact(q, q, q, lr, w, chunk_size=2, cu_seqlens=[0, 2, 4], group=object())
    with pytest.raises(ValueError, match="lact_impl"):
        lact(q, q, q, lr, w, chunk_size=2, impl="naive", group=object())
    with pytest.raises(ValueError, match="split evenly"):
        shard_chunks(torch.zeros(1, 11), 4, 0, 2)
