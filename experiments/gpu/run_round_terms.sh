#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): where a speculation round's time goes on
# the Qwen2.5-1.5B shape (issue 13; BENCHMARKS.md 10.6 found rounds 0.8-2.3 ms over the
# profile's parts), with XLA's defaults and with command buffers (CUDA graphs) extended to
# while loops and conditionals, whose absence would cost each nested loop its graphs.
# About 4 minutes. -> $OUT/round_terms/<flag set>.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
declare -A FLAGS=(
  [default]=""
  [command_buffer_loops]="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"
)
for name in default command_buffer_loops; do
  echo "=== XLA_FLAGS='${FLAGS[$name]}' ($name)"
  XLA_FLAGS="${FLAGS[$name]}" timeout 130 python3 experiments/gpu/round_terms.py \
    --output="$OUT/round_terms/$name.json" 2>&1 | grep -v -i warn
done
