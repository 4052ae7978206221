"""Registers ``lact-gpu`` (the script lives in ``gpu_lact.py``; the registry discovers ``bench_*.py``).

Run: ``batchcraft bench lact-gpu`` on a CUDA machine (skips with a message without CUDA), or
``python benchmarks/gpu_lact.py``; ``benchmarks/gpu_check.sh`` also runs the gpu-marked tests.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).with_name("gpu_lact.py")
if "gpu_lact" not in sys.modules:  # the registry imports bench scripts by path, not as a package
    _spec = importlib.util.spec_from_file_location("gpu_lact", _path)
    assert _spec is not None and _spec.loader is not None
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["gpu_lact"] = _mod
    _spec.loader.exec_module(_mod)

main = sys.modules["gpu_lact"].main

if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
