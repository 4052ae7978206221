#!/usr/bin/env bash
# GPU checks of the LaCT bf16 / compiled / Triton paths (issue 11), for a session with a CUDA GPU.
# Usage (from the repository root): bash benchmarks/gpu_check.sh [--quick]
# 1. gpu- and triton-marked LaCT tests on the real kernels (TRITON_INTERPRET unset);
# 2. the benchmark (batchcraft.benchmarks.gpu_lact, < 4 min on an H200), JSON in benchmarks/results/lact-gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
unset TRITON_INTERPRET
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -m pytest tests/ops/lact/test_triton.py tests/ops/lact/test_bf16.py tests/ops/lact/test_compile.py \
    -q -p no:cacheprovider -m "gpu or triton or not slow" --timeout=300
"$PY" -m batchcraft.benchmarks.gpu_lact "$@"
