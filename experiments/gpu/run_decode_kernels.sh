#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): issue 14's one-query kernels, bandwidth and
# persistent compilation cache on one GPU, about 4.5 minutes:
#   1. decode_kernels.py: a one-token step per kernel (xla, pallas over the bucket, pallas over
#      the whole cache as before) and a 4-token verify, SmolLM2 and Qwen2.5-1.5B shapes at
#      buckets 256 / 2K / 16K: ms/token, GB/s, % of the read bandwidth, kernels per step
#      -> $OUT/decode_kernels.json
#   2. compile_twice.py: a Qwen2.5-1.5B-shaped AR generation's compile_s in a fresh and in a
#      second process sharing the on-disk cache -> $OUT/compile_twice.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
timeout 190 python3 experiments/gpu/decode_kernels.py --budget_s=140 2>&1 | grep -v -i warn
timeout 110 python3 experiments/gpu/compile_twice.py --model=qwen2.5-1.5b --tokens=32 2>&1 \
  | grep -v -i warn
