#!/usr/bin/env bash
# What the AMD driver needs checked on a machine with AMD GPUs (MI300X, MI350X, 7900 XTX), in one call:
#   bash bench/amd_check.sh [--quick]        (PYTHON=... picks the interpreter; TRAINER_AMD_SIM=gfx942,gfx942 runs it on the simulator)
# Needs clang (19+; 20+ for gfx950) with lld, and access to /dev/kfd and /dev/dri/renderD* (group 'render').
# 1. bench/amd_check.py: PASS/FAIL for open, topology, memory, queues, a kernel, SDMA, peer copy, the collectives
#    (every dtype, bit-identical to the CPU devices), then figures (copy GB/s, matmul TFLOP/s, all-reduce bus GB/s)
# 2. the core op suites with AMD:0 as the default device
# 3. one Llama step: launch.py recipes/llama_tiny.yaml on AMD (dp=2 where there are two GPUs), against the CPU's losses
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer_cache}
status=0
verdict() { if [ "$1" = 0 ]; then echo "PASS $2"; else echo "FAIL $2"; status=1; fi; }
echo "== 1. driver steps and figures"
timeout 900 $PY bench/amd_check.py "$@"; verdict $? "driver steps (above)"
echo "== 2. core op suites on AMD:0"
out=$(TRAINER_DEVICE=AMD:0 timeout 1800 $PY -m pytest -q --tb=line -p no:cacheprovider -k "not interp" tests/core/test_elementwise.py \
  tests/core/test_reduce.py tests/core/test_matmul.py tests/core/test_movement.py tests/core/test_dtypes.py tests/core/test_functional.py 2>&1)
echo "$out" | tail -15; echo "$out" | tail -1 | grep -q " passed" && ! echo "$out" | tail -1 | grep -q "failed"; verdict $? "op suites"
echo "== 3. a Llama step"
n=$($PY -c "from trainer.core.device import device_count; print(device_count('AMD'))")
mesh=$([ "$n" -ge 2 ] && echo "--set mesh.dp=2 --set train.micro_batch_size=4" || echo "")
args="recipes/llama_tiny.yaml --set model.n_layers=1 --set model.dim=64 --set model.ffn_dim=128 --set train.global_batch_size=8 --set train.micro_batch_size=8 --max-steps 3 --no-progress --print-losses --set checkpoint.every_steps=100"
tmp=$(mktemp -d)
cpu=$($PY launch.py $args --set checkpoint.dir=$tmp/a --results $tmp/ra 2>&1 | grep "^step")
amd=$($PY launch.py $args $mesh --set mesh.device=AMD --set checkpoint.dir=$tmp/b --results $tmp/rb 2>&1 | grep "^step")
echo "cpu: $(echo $cpu)"; echo "amd: $(echo $amd)"
$PY -c "import sys, numpy as np; a, b = ([float(l.split()[-1]) for l in s.splitlines()] for s in sys.argv[1:]); np.testing.assert_allclose(b, a, rtol=1e-5); assert len(a) == 3" "$cpu" "$amd"
verdict $? "Llama step (losses of the CPU run, rtol 1e-5)"
rm -rf "$tmp"
exit $status
