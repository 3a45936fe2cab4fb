#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): a skip-set switch through the compile worker
# (compile_cache.CompileWorker; KnapSpecConfig.background_compile="process"; issue 13 item 5), on
# the Qwen2.5-1.5B shape at 2K and 16K context: the worker compiles each set's static-mask segment
# program in its own process while this one decodes AR, then this one loads it from the
# executable store. Prints the switch (load + priming call + first call over a steady one), the
# worker's time, AR's step alone and beside the worker. About 2-3 minutes.
# -> $OUT/switch_cost/worker_ctx<context>.json, and store_load_parts.json (store_load_parts.py)
#   bash experiments/gpu/run_switch_worker.sh [--sets=... further switch_cost.py flags]
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache  # a fresh store: every set compiled by the worker
for context in ${CONTEXTS:-2000 16000}; do
  timeout "${SWITCH_TIMEOUT:-240}" python3 experiments/gpu/switch_cost.py --modes=worker \
    --sets=0:0,8:4,9:10,11:11,16:12 --context="$context" \
    --output="$OUT/switch_cost/worker_ctx$context.json" "$@" 2>&1 | grep -v -i warn
done
# where each load goes (read, sha256, unpickle, XLA's deserialization and load), every entry
timeout 120 python3 experiments/gpu/store_load_parts.py --store="$KNAPSPEC_CACHE/executables" \
  --output="$OUT/switch_cost/store_load_parts.json" 2>&1 | grep -v -i warn
