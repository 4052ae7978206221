"""Independent jobs in worker processes, with their progress reported back to the caller.

Small models on a CPU gain little from intra-op threads (the matrices are too small to split
well), so the reproductions train independent arms side by side instead: one process per core,
one thread each. A job's result does not depend on where it runs: the same job gives the same
numbers in the calling process (``workers=1``) and in a worker, because every job seeds its
own generators and runs on the same number of threads.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import torch

__all__ = ["Report", "default_workers", "run_jobs"]

Report = Callable[..., None]  # report(n=1, **fields): n more steps of this job are done

_QUEUE: Any = None  # the worker's end of the progress queue (set by _init_worker)


def default_workers(jobs: int) -> int:
    """One worker per available core, at most one per job."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(jobs, cores or 1))


def _init_worker(threads: int, q: Any) -> None:
    global _QUEUE
    _QUEUE = q
    torch.set_num_threads(threads)


def _run_in_worker(fn: Callable[..., Any], index: int, args: tuple[Any, ...]) -> Any:
    def report(n: int = 1, **fields: Any) -> None:
        _QUEUE.put((index, n, fields))

    return fn(*args, report)


def run_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    *,
    workers: int = 1,
    threads: int = 1,
    on_progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> list[Any]:
    """Call ``fn(*job, report)`` for every job and return the results in job order.

    Args:
        fn: a module-level function (workers import it by name); its last argument is
            ``report(n=1, **fields)``, which it calls as it makes progress.
        jobs: the positional arguments of each call (picklable).
        workers: processes to use; ``<= 1`` (or a single job) runs every job here, in order.
        threads: torch intra-op threads in each job (also set here while running in-process).
        on_progress: ``fn(job_index, n, fields)`` in this process for every report.

    Raises:
        whatever a job raised (the remaining jobs are cancelled).
    """

    def forward(index: int) -> Report:
        def report(n: int = 1, **fields: Any) -> None:
            if on_progress is not None:
                on_progress(index, n, fields)

        return report

    if workers <= 1 or len(jobs) <= 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [fn(*job, forward(i)) for i, job in enumerate(jobs)]
        finally:
            torch.set_num_threads(before)

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads or CUDA
    q = ctx.Queue()
    results: list[Any] = [None] * len(jobs)

    def drain(block: bool) -> None:
        while True:
            try:
                index, n, fields = q.get(timeout=0.2) if block else q.get_nowait()
            except queue_mod.Empty:
                return
            block = False
            if on_progress is not None:
                on_progress(index, n, fields)

    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker,
        initargs=(threads, q),
    ) as pool:  # fmt: skip
        pending: dict[Future[Any], int] = {
            pool.submit(_run_in_worker, fn, i, tuple(job)): i for i, job in enumerate(jobs)
        }
        try:
            while pending:
                drain(block=True)
                done, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[pending.pop(fut)] = fut.result()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    drain(block=False)
    return results
