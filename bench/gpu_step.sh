#!/usr/bin/env bash
# The real-scale step on one GPU, through the launcher's loop, in one call (table at the end):
#   bash bench/gpu_step.sh [part] [path/to/torch_reference.py]     part: check | memory | accum | recipe | speed | all (default all)
# check   the CUDA tests touched by the step's mechanisms (casts, recompute, JIT arena) on CUDA:0
# memory  bench/llama_step.py at the 8B width: 4 and 8 layers at batch 1 x 8192 with and without recompute (the
#         per-layer slopes), micro-batch 2 with 1 and 8 accumulation steps; the 8-layer batch-1 step next to torch
#         eager and amp, and its evaluation time
# recipe  launch.py recipes/llama31_8b.yaml with only data.path, mesh.dp=1 and model.n_layers changed (the largest
#         layer count the plan fits on this GPU), 13 steps at the recipe's batch; tensor and data parallelism on two
#         virtual devices (memory per device against the plan); the 32-layer model's build
# speed   (not in all) the fused-kernel tests on CUDA:0, the attention kernels at B8 H16 T2048 and at the benchmark's
#         B1 H32 (8 kv) T8192 against torch sdpa, the 8-layer batch-1 step against torch eager and amp, and its profile
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PART=${1:-all}
YARD=${2:-.yard/torch_reference.py}
export PYTHONUNBUFFERED=1 TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer_cache}
OUT=${OUT:-/tmp}
W="--set mesh.dp=1 --set mesh.zero1=false"
bench() { timeout 600 $PY bench/llama_step.py "$@" 2>&1 | tee -a "$OUT/gpu_step.log" | grep -E "^(built|first|ours|plan|torch|eval|BENCH)|Error|error" ; }

if [ "$PART" = check ] || [ "$PART" = all ]; then
  echo "== check"
  TRAINER_DEVICE=CUDA:0 timeout 400 $PY -m pytest -q --tb=short -p no:cacheprovider -k "not interp" tests/core/test_dtypes.py \
    tests/core/test_recompute.py tests/core/test_jit.py tests/core/test_random.py 2>&1 | tail -6
  timeout 300 $PY -m pytest -q --tb=short -p no:cacheprovider -k "not interp" tests/core/test_cuda.py tests/core/test_attention_kernel.py 2>&1 | tail -4
fi
if [ "$PART" = memory ] || [ "$PART" = all ]; then
  echo "== memory"
  for L in 4 8; do for rc in none layer; do
    extra=""; [ "$L" = 8 ] && [ "$rc" = none ] && extra="--torch $YARD --eval 32"
    bench $W --set model.n_layers=$L --set train.global_batch_size=1 --set train.micro_batch_size=1 --set train.recompute=$rc --steps 3 $extra
  done; done
fi
if [ "$PART" = memory ] || [ "$PART" = accum ] || [ "$PART" = all ]; then
  echo "== accumulation"
  bench $W --set model.n_layers=4 --set train.global_batch_size=2 --set train.micro_batch_size=2 --steps 2
  bench $W --set model.n_layers=4 --set train.global_batch_size=16 --set train.micro_batch_size=2 --steps 1
fi
if [ "$PART" = recipe ] || [ "$PART" = all ]; then
  echo "== recipe"
  L=$($PY - <<'PYEOF'
from trainer.config import load_config
from trainer.plan import plan_memory, with_capacity
fit = [L for L in range(1, 33) if with_capacity(c := load_config("recipes/llama31_8b.yaml", ["mesh.dp=1", f"model.n_layers={L}"]), plan_memory(c)).fits]
print(max(fit))
PYEOF
)
  echo "largest layer count the plan fits on one GPU: $L"
  $PY -c "from trainer.data.tiny_corpus import build_markov_c4; build_markov_c4('/tmp/c4', vocab=128256, seq_len=8192, train_samples=16*16, validation_samples=1024)"
  timeout 900 $PY launch.py recipes/llama31_8b.yaml --set data.path=/tmp/c4 --set mesh.dp=1 --set model.n_layers=$L --max-steps 13 \
    --print-losses --no-progress --results /tmp/sub 2>&1 | tee -a "$OUT/gpu_step.log" | grep -E "^step|error|Error|stopped"
  TRAINER_CUDA_DEVICES=2 bench --set mesh.dp=1 --set mesh.tp=2 --set mesh.zero1=false --set model.n_layers=2 --set train.global_batch_size=1 --set train.micro_batch_size=1 --steps 2
  TRAINER_CUDA_DEVICES=2 bench --set mesh.dp=2 --set mesh.zero1=true --set model.n_layers=2 --set train.global_batch_size=2 --set train.micro_batch_size=1 --steps 2
  timeout 300 $PY - <<'PYEOF'
import resource, time
from trainer.config import load_config
from trainer.build import build_replica, build_optimizer
from trainer.parallel.data_parallel import DataParallel
cfg = load_config("recipes/llama31_8b.yaml", ["mesh.dp=1"])
t0 = time.perf_counter(); m = build_replica(cfg, ["CUDA:0"]); t1 = time.perf_counter()
DataParallel([m], lambda ps: build_optimizer(cfg, ps), master_dtype="float32"); t2 = time.perf_counter()
print(f"BUILD 8B (32 layers): model {t1 - t0:.1f}s, optimizer state {t2 - t1:.1f}s, host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
PYEOF
fi
if [ "$PART" = speed ]; then
  echo "== speed"
  timeout 300 $PY -m pytest -q --tb=short -p no:cacheprovider tests/core/test_kernels.py tests/core/test_attention_kernel.py 2>&1 | tail -3
  timeout 300 $PY bench/attention_kernels.py 2>&1 | tail -5
  timeout 300 $PY bench/attention_kernels.py 1 32 8192 128 8 2>&1 | tail -5
  bench $W --set model.n_layers=8 --set train.global_batch_size=1 --set train.micro_batch_size=1 --steps 5 --torch $YARD
  TRAINER_CUDA_GRAPHS=0 timeout 600 $PY bench/llama_step.py $W --set model.n_layers=8 --set train.global_batch_size=1 \
    --set train.micro_batch_size=1 --steps 2 --profile 2>&1 | tee "$OUT/profile.txt" | grep -E "^ +[0-9.]+ ms|^profile|^ours"
fi
echo "== table"
grep -E "^BENCH" "$OUT/gpu_step.log"
