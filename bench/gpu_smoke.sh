#!/usr/bin/env bash
# Quick GPU checks of the JIT (CUDA graphs, arena), custom kernels and a small Llama step, in one call:
#   bash bench/gpu_smoke.sh
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer_cache}
PY=${PYTHON:-python3}
echo "== tests on CUDA:0 (jit, kernels, cuda)"
TRAINER_DEVICE=CUDA:0 timeout 300 $PY -m pytest -q --tb=short -p no:cacheprovider -k "not interp" tests/core/test_jit.py tests/core/test_kernels.py tests/core/test_cuda.py 2>&1 | tail -15
echo "== small Llama step (2 layers, full vocabulary)"
timeout 300 $PY bench/gpu_llama.py --layers 2 --iters 5 "$@" 2>&1 | tail -12
