#!/usr/bin/env bash
# Everything the CUDA backend needs checked on a GPU machine, in one call (short output, table at the end):
#   bash bench/gpu_check.sh            (PYTHON=... to pick the interpreter; --quick for small benchmark sizes)
# 1. tests/core/test_cuda.py, test_kernels.py, test_attention_kernel.py (CUDA:0 against the CPU), test_jit.py on CUDA:0,
#    tests/parallel/test_ring.py (the ring collectives on CUDA devices; virtual ones where the host has too few GPUs)
# 2. the core op suites and the PyTorch-semantics suite with CUDA:0 as the default device (TRAINER_DEVICE; the CPU interpreter half skipped)
# 3. bench/gpu_core.py (bf16 matmul and a fused elementwise chain next to PyTorch)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer_cache}
$PY - <<'PYEOF'
from trainer.core.runtime import cuda as c
print("cuda devices:", c.cuda_device_count(), "|", c.cuda_unavailable_reason() or "ok", "| compiler:", c.compiler_version(), "| nvrtc:", getattr(c.load_nvrtc(), "_name", None))
PYEOF
echo "== 1. CUDA tests"
timeout 400 $PY -m pytest -q --tb=short -p no:cacheprovider -k "not interp" tests/core/test_cuda.py tests/core/test_kernels.py tests/core/test_attention_kernel.py tests/parallel/test_ring.py 2>&1 | tail -20
TRAINER_DEVICE=CUDA:0 timeout 200 $PY -m pytest -q --tb=short -p no:cacheprovider -k "not interp" tests/core/test_jit.py 2>&1 | tail -5
echo "== 2. core op suites on CUDA:0"
TRAINER_DEVICE=CUDA:0 timeout 420 $PY -m pytest -q --tb=line -p no:cacheprovider -k "not interp" tests/core/test_elementwise.py \
  tests/core/test_reduce.py tests/core/test_matmul.py tests/core/test_movement.py tests/core/test_dtypes.py tests/core/test_torch_api.py 2>&1 | tail -30
echo "== 3. bench/gpu_core.py"
timeout 300 $PY bench/gpu_core.py "$@" 2>&1 | tail -20
