"""Seeding for recipes: the seed decides everything, and the caller's RNG is left alone.

* :func:`derive_seed` turns ``(seed, *labels)`` into an independent 63-bit seed (stable across
  machines and Python versions: SHA-256 of the text).
* :func:`seeded` builds things (a model's initial weights) from a seed inside a forked global RNG,
  so ``--seed`` decides the starting weights and the caller's RNG state is untouched afterwards.
* :func:`step_seed` reseeds the (forked) global RNG at each training step from
  ``(seed, step, rank)``: dropout masks and other global-RNG draws are then a pure function of
  the step, so a resumed run repeats exactly what an uninterrupted run would have drawn, with no
  RNG state to save.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch

__all__ = ["derive_seed", "generator", "isolated_rng", "seeded", "step_seed"]


def derive_seed(seed: int, *labels: object) -> int:
    """An independent seed for ``labels`` (e.g. ``("step", 12, "rank", 0)``) under ``seed``."""
    text = repr((int(seed), *labels)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def generator(seed: int, *labels: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A private ``torch.Generator`` seeded with ``derive_seed(seed, *labels)`` (or ``seed`` alone)."""
    return torch.Generator(device=device).manual_seed(
        derive_seed(seed, *labels) if labels else seed
    )


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block with a forked global RNG (CPU and initialised CUDA devices): whatever the
    block seeds or draws, the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        yield


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """``with seeded(seed): model = Model(cfg)``: initial weights decided by ``seed`` alone."""
    with isolated_rng():
        torch.manual_seed(seed)
        yield


def step_seed(seed: int, step: int, rank: int = 0) -> None:
    """Seed the global RNG for training step ``step`` of rank ``rank`` (use inside
    :func:`isolated_rng`)."""
    torch.manual_seed(derive_seed(seed, "step", step, "rank", rank))
