#!/usr/bin/env bash
# Device machine: which XLA GPU flags this jaxlib accepts (XLA refuses an unknown flag at
# start-up), before a run depends on one. The candidates are the command-buffer (CUDA graph)
# settings the same-process slowdown and the per-window fixed cost may hinge on (BENCHMARKS.md
# 10.19): graph updates when a temp buffer moves, the trace cache, conditionals in graphs.
# A few seconds per flag. Extra flags to probe can be given as arguments.
#   bash experiments/gpu/probe_xla_flags.sh [--xla_other_flag=value ...]
set -uo pipefail
[ -d /root/site ] && export PYTHONPATH=/root/site:$PWD
candidates=(
  --xla_gpu_enable_command_buffer=+CONDITIONAL
  --xla_gpu_command_buffer_update_mode=SKIP_TEMP
  --xla_gpu_command_buffer_update_mode=VMM_PERSISTENT_TEMP
  --xla_gpu_enable_persistent_temp_buffers=true
  --xla_cmd_buffer_trace_cache_size=256
  --xla_gpu_command_buffer_unroll_loops=true
  --xla_gpu_graph_min_graph_size=1
  "$@"
)
for flag in "${candidates[@]}"; do
  if out=$(XLA_FLAGS="$flag" timeout 120 python3 -c \
      "import jax, jax.numpy as jnp; print(float(jax.jit(lambda x: (x * 2).sum())(jnp.ones(8))))" \
      2>&1); then
    echo "accepted  $flag"
  else
    echo "REFUSED   $flag: $(echo "$out" | grep -i -m1 -E 'unknown|flag|error' | cut -c1-160)"
  fi
done
