"""run_jobs: same results in-process and in worker processes, progress forwarded, errors raised."""

from __future__ import annotations

import pytest
import torch

from batchcraft.utils.parallel import default_workers, run_jobs


def _job(seed: int, steps: int, report):  # module level: workers import it by name
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(())
    for _ in range(steps):
        x += torch.randn((), generator=g)
        report(1, value=float(x))
    return {"seed": seed, "sum": float(x), "threads": torch.get_num_threads()}


def _failing(message: str, report):
    raise ValueError(message)


@pytest.mark.parametrize("workers", [1, 2])
def test_results_are_in_job_order_and_independent_of_where_jobs_run(workers):
    seen: dict[int, int] = {}

    def on_progress(index, n, fields):
        assert "value" in fields
        seen[index] = seen.get(index, 0) + n

    jobs = [(3, 5), (1, 2), (2, 4)]
    out = run_jobs(_job, jobs, workers=workers, threads=1, on_progress=on_progress)
    assert [r["seed"] for r in out] == [3, 1, 2]
    assert [r["sum"] for r in out] == [_job(s, n, lambda *a, **k: None)["sum"] for s, n in jobs]
    assert seen == {0: 5, 1: 2, 2: 4}  # every report reached the caller
    assert all(r["threads"] == 1 for r in out)


def test_in_process_run_restores_the_thread_count():
    before = torch.get_num_threads()
    run_jobs(_job, [(0, 1)], workers=1, threads=1)
    assert torch.get_num_threads() == before


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(ValueError, match="bad job"):
        run_jobs(_failing, [("bad job",), ("bad job",)], workers=2)


def test_default_workers_is_bounded_by_jobs_and_at_least_one():
    assert default_workers(1) == 1
    assert 1 <= default_workers(64) <= 64
