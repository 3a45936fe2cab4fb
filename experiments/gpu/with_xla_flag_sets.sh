#!/usr/bin/env bash
# Device machine: runs experiments/gpu/<script> once with XLA's defaults and once with command
# buffers (CUDA graphs) extended to while loops and conditionals, writing
# $OUT/<name>/<flag set>.json; without those command buffers each nested loop and each lax.cond
# goes back to the host. Used by run_round_terms.sh and run_switch_cost.sh.
#   bash experiments/gpu/with_xla_flag_sets.sh SCRIPT NAME TIMEOUT_S [flags for the script...]
set -uo pipefail
script=$1 name=$2 limit=$3
shift 3
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
# command_buffer_conds: XLA's default command types plus conditionals only ("+" adds to the
# defaults): each lax.cond a CUDA conditional node inside the loop body's graph, the loop itself
# still driven from the host. Session 9 measured only the explicit list with WHILE, where static
# masks slowed too (10.13). no_command_buffers: no CUDA graphs at all (switch_cost.py's
# dispatch mode, whose one program per sublayer may have its graph updated at every call with
# another layer's buffers: 79-114 us of host time per call with graphs, 10.22). FLAG_SETS picks
# the sets, in order.
declare -A FLAGS=(
  [default]=""
  [command_buffer_loops]="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL"
  [command_buffer_conds]="--xla_gpu_enable_command_buffer=+CONDITIONAL"
  [no_command_buffers]="--xla_gpu_enable_command_buffer="
)
for set in ${FLAG_SETS:-default command_buffer_loops}; do
  echo "=== XLA_FLAGS='${FLAGS[$set]}' ($set)"
  XLA_FLAGS="${FLAGS[$set]}" timeout "$limit" python3 "experiments/gpu/$script" \
    --output="$OUT/$name/$set.json" "$@" 2>&1 | grep -v -i warn
done
