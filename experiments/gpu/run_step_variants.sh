#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): why a one-token forward of the
# Qwen2.5-1.5B shape costs more than a 2- or 4-token one (issue 14: "one-token step <= the
# 4-token verify"). decode_kernels.py times the one-token step (xla and pallas attention) and
# 2- and 4-token forwards at buckets 256 and 2048, once per XLA flag set below, and lists each
# step's kernels by kind (Triton GEMM fusions, cuBLAS calls, loop fusions). About 4 minutes.
#   -> $OUT/step_variants/<flag set>.json
set -uo pipefail
source experiments/gpu/env.sh
declare -A FLAGS=(
  [default]=""
  [no_triton_gemm]="--xla_gpu_enable_triton_gemm=false"
  [no_command_buffer]="--xla_gpu_enable_command_buffer="
)
for name in default no_triton_gemm no_command_buffer; do
  echo "=== XLA_FLAGS='${FLAGS[$name]}' ($name)"
  XLA_FLAGS="${FLAGS[$name]}" KNAPSPEC_CACHE=/tmp/knapspec_cache_$name timeout 150 \
    python3 experiments/gpu/decode_kernels.py --models=qwen2.5-1.5b --attn_lens=256,2048 \
      --variants=xla,pallas --verify=2,4 --budget_s=110 \
      --output="$OUT/step_variants/$name.json" 2>&1 | grep -v -i warn
done
