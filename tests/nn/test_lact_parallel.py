"""Chunk-parallel LaCT layers on 2 gloo ranks equal the one-process layer (fp64): the causal
layer (TTT + sliding-window / full attention over the gathered keys) and the bidirectional set
layer (uneven slices), outputs, input gradients and every parameter gradient."""

from __future__ import annotations

import json

import pytest
from helpers import spawn_gloo
from nn.lact_parallel_cases import LAYER_CASES, run_layer_cases

TOL = 1e-10  # fp64; only the order of the float sums differs from one process


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("lact_layer_parallel")
    spawn_gloo(run_layer_cases, 2, str(out))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.id)
def test_chunk_parallel_layer_equals_one_process(results, case):
    for rank, res in enumerate(results):
        errs = res[case.id]
        assert "grad_x" in errs and "grad_w_down" in errs
        bad = {k: v for k, v in errs.items() if not v <= TOL}
        assert not bad, f"rank {rank}: {bad}"


def test_chunk_parallel_layer_refuses_a_cache(results):
    assert all(res["error_cache"]["raised"] == 0.0 for res in results)
