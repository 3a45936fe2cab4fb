#!/usr/bin/env bash
# Device machine, analysis 5 (issue 15 item 5): latency profiles of model shapes with random
# weights (bf16, the engine's defaults on that device: Pallas one-token steps and windows,
# two-row projections), projected with a measured acceptance curve, by default Qwen2.5-Coder-
# 1.5B's held-out curve (results/cpu/analysis/acceptance_qwen/fit.json, in the working tree).
# Needs no model files: run after `source experiments/gpu/env.sh` (or ship_qwen.sh setup).
# Each shape's profile is saved as soon as it is measured; if the measuring run hits its time
# limit, the projection is redone from the profiles that were saved. Settings by environment:
#   SCALE_SHAPES   shapes to measure (default llama3.1-8b,qwen3-8b)
#   ACCEPTANCE_FIT the curve (SmolLM2's: results/cpu/analysis/acceptance/fit.json)
#   ADD_PROFILES   measured real-model profiles to project too, shape=path.json[,...]
#   SCALE_TIMEOUT  seconds for the measuring run (default 470)
# The H100 run of 2026-11-23 (BENCHMARKS.md 9.6) was this script with SmolLM2's curve, the
# shapes llama3.2-1b,llama3.1-8b,qwen3-8b, the H100 SmolLM2 profile added, and the engine's
# defaults of then (XLA attention, one-row projections).
set -uo pipefail
out=${OUT:-results/h200}/scale
fit=${ACCEPTANCE_FIT:-results/cpu/analysis/acceptance_qwen/fit.json}
add=()
[ -n "${ADD_PROFILES:-}" ] && add=(--add_profiles="$ADD_PROFILES")
timeout ${SCALE_TIMEOUT:-470} python3 experiments/project_scale.py \
  --shapes=${SCALE_SHAPES:-llama3.1-8b,qwen3-8b} --attn_lens=1024,4096,16384 --dtype=bfloat16 \
  --acceptance_fit=$fit "${add[@]}" --output_dir=$out 2>&1 | grep -v -i warn
if [ ! -f $out/summary.md ]; then
  python3 experiments/project_scale.py --profiles_dir=$out/profiles --acceptance_fit=$fit \
    "${add[@]}" --output_dir=$out 2>&1 | grep -v -i warn
fi
