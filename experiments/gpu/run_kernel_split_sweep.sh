#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): the split-KV kernel alone over split size
# and warps (kernel_split_sweep.py), Qwen2.5-1.5B and Llama-3.1-8B heads in bf16 at buckets 1K,
# 16K and 28K, T = 1, 4, 11. Budget 300 s of the call's 600, compiles included.
# -> $OUT/kernel_split.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
timeout 400 python3 experiments/gpu/kernel_split_sweep.py --budget_s=${SWEEP_BUDGET:-300} "$@" \
  2>&1 | grep -v -i warn
