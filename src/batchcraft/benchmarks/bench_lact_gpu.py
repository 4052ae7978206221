"""Registers ``lact-gpu``: the benchmark lives in :mod:`batchcraft.benchmarks.gpu_lact`.

Run: ``batchcraft bench lact-gpu`` on a CUDA machine (skips with a message without CUDA), or
``python -m batchcraft.benchmarks.gpu_lact [--quick] [--cpu-dry-run]``; in a checkout,
``bash benchmarks/gpu_check.sh`` also runs the gpu-marked tests first.
"""

from __future__ import annotations

import sys

from batchcraft.benchmarks.gpu_lact import main  # importing it registers lact-gpu

__all__ = ["main"]

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
