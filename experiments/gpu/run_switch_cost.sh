#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): what switching to a new skip set costs on
# the Qwen2.5-1.5B shape, static masks against run-time gating (ModelConfig.draft_skip; issue 13
# item 5), with XLA's defaults and with command buffers (CUDA graphs) taking in conditionals and
# while loops (without them each lax.cond waits for its predicate on the host). About 4 minutes.
# -> $OUT/switch_cost/<flag set>.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
declare -A FLAGS=(
  [default]=""
  [command_buffer_conditionals]="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"
)
for name in default command_buffer_conditionals; do
  echo "=== XLA_FLAGS='${FLAGS[$name]}' ($name)"
  XLA_FLAGS="${FLAGS[$name]}" timeout 170 python3 experiments/gpu/switch_cost.py \
    --output="$OUT/switch_cost/$name.json" "$@" 2>&1 | grep -v -i warn
done
