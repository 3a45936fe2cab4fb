#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): the one-token step with its projections
# padded to two rows (ModelConfig.matmul_rows=2) against the plain one-token step and the 2-
# and 4-token forwards, Qwen2.5-1.5B and SmolLM2 shapes (issue 14: "one-token step <= the
# 4-token verify", "AR ms/token down by >= 20%"). About 3.5 minutes.
#   -> $OUT/step_rows.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
timeout 280 python3 experiments/gpu/decode_kernels.py --models=qwen2.5-1.5b,smollm2 \
  --attn_lens=256,2048,16384 --variants=pallas,pallas_rows2,xla_rows2 --verify=2,4 \
  --budget_s=250 --output="$OUT/step_rows.json" 2>&1 | grep -v -i warn
