"""Shared pytest configuration: CPU-first, Triton interpreter without CUDA, gpu/data gating."""

from __future__ import annotations

import os

# Triton kernels run in the CPU interpreter when no GPU is present; must be set before triton imports.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

import pytest

from batchcraft.data.paths import find_data_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    """Keep each test on the machine's default threads and a fixed global seed for stray randomness."""
    torch.manual_seed(0)


@pytest.fixture
def data_dir():
    """The real-data folder, or skip the test when it is absent (marker ``data``)."""
    d = find_data_dir()
    if d is None:
        pytest.skip("real data not found: set $BATCHCRAFT_DATA or place it at ../shared/data")
    return d
