#!/usr/bin/env bash
# What the parallelism issue measures on a host with two (or more) NVLinked GPUs, in one call:
#   bash bench/gpu_parallel.sh [path/to/torch_reference.py]       (default .yard/torch_reference.py)
# 1. bench/collectives.py: our ring all-reduce at 16 MiB / 128 MiB / 1 GiB and a peer copy, next to NCCL
# 2. the launcher's step of recipes/llama31_8b.yaml at the 8B width, 8 layers (bench/llama_step.py) on 1 GPU
#    (batch 2 x 8192), dp=2 (batch 4 x 8192) and tp=2 (batch 2 x 8192), then the data-parallel scaling:
#    dp=2 tokens/s over 1-GPU tokens/s, and the memory per GPU of each
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
YARD=${1:-.yard/torch_reference.py}
export PYTHONUNBUFFERED=1 TRAINER_CACHE=${TRAINER_CACHE:-/tmp/trainer_cache}
echo "== 1. collectives"
timeout 300 $PY bench/collectives.py "$YARD" 2>&1 | tail -8
echo "== 2. the 8B-width step, 8 layers"
declare -A TOK
S="--set model.n_layers=8 --set train.micro_batch_size=2 --steps 3"
for run in "1:--set mesh.dp=1 --set train.global_batch_size=2" "dp2:--set mesh.dp=2 --set train.global_batch_size=4" \
           "tp2:--set mesh.dp=1 --set mesh.tp=2 --set mesh.zero1=false --set train.global_batch_size=2"; do
  name=${run%%:*}; args=${run#*:}
  out=$(timeout 420 $PY bench/llama_step.py $S $args 2>&1)
  echo "$out" | grep -E "^(ours|plan|device|BENCH)|Error" | sed "s/^/[$name] /"
  TOK[$name]=$(echo "$out" | awk '/^ours/ {gsub(",", "", $2); print $2}')
done
$PY -c "import sys; a, b = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'dp=2 scaling: {b / a:.2f}x of one GPU' if a else 'dp=2 scaling: no 1-GPU figure')" "${TOK[1]}" "${TOK[dp2]}"
