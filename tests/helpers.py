"""Test helpers shared across components."""

from __future__ import annotations

import torch


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, msg: str = ""
) -> None:
    """``torch.testing.assert_close`` with a caller message prefix."""
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}" if msg else m
    )


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative RMS error ``||a - b||_2 / ||a||_2`` (the spec's tolerance measure for low precision)."""
    a64, b64 = a.detach().double(), b.detach().double()
    return float((a64 - b64).norm() / a64.norm().clamp_min(1e-30))


def run_killed_then_resumed(
    args: list[str],
    progress_file,
    *,
    reached,
    seed: int,
    timeout: float = 300,
    launcher: list[str] | None = None,
    resume_launcher: list[str] | None = None,
) -> None:
    """Run ``batchcraft *args`` in a subprocess, ``kill -9`` it at a random moment after
    ``reached(progress_file)`` first holds, then run the same command again to completion.

    Args:
        args: the command line after ``batchcraft``.
        progress_file: a file whose content tells how far the run is (e.g. a checkpoint manifest).
        reached: ``fn(path) -> bool``: the first run may be killed from this point on.
        seed: decides the random extra delay (0-400 ms) before the kill.
        launcher: command prefix instead of ``python`` (e.g. torchrun with its options); the
            whole process group is killed.
        resume_launcher: prefix of the resuming run (default: ``launcher``).
    """
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    def command(prefix: list[str] | None) -> list[str]:
        return [*(prefix or [sys.executable]), "-m", "batchcraft.cli.main", *args]

    cmd = command(launcher)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            try:
                ok = reached(progress_file)
            except (OSError, ValueError, KeyError):
                ok = False
            if ok:
                time.sleep(random.Random(seed).uniform(0.0, 0.4))
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
                break
            time.sleep(0.02)
    finally:
        out = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{out!r}"
    again = command(resume_launcher if resume_launcher is not None else launcher)
    res = subprocess.run(again, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def free_port() -> int:
    """A TCP port free on localhost right now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` CPU processes on a free port."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port())]  # fmt: skip


def spawn_gloo(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh CPU processes joined in a gloo group.

    ``fn`` must be importable by name in a child (a module-level function of a test helper
    module); an exception in any rank fails the call with that rank's traceback.
    """
    import torch.multiprocessing as mp

    mp.spawn(_gloo_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def _gloo_entry(rank: int, world: int, port: int, fn, args) -> None:
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def assert_one_line_error(result) -> None:
    """A CLI result (typer's CliRunner) that failed cleanly: exit 2, one ``error:`` line."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
