#!/usr/bin/env bash
# Device machine (H100), analysis 5: latency profiles of the Llama-3.2-1B, Llama-3.1-8B and
# Qwen3-8B shapes with random weights (bf16), projected with SmolLM2's acceptance curve
# (results/cpu/analysis/acceptance/fit.json, in the working tree) and the committed real H100
# SmolLM2 profile. Needs no model files: run after `source experiments/gpu/env.sh` (or with
# PYTHONPATH=/root/site:$PWD after ship_part1.sh). Each shape's profile is saved as soon as it
# is measured; if the measuring run hits its time limit, the projection is redone from the
# profiles that were saved.
set -uo pipefail
out=${OUT:-results/h100}/scale
smol=profiles/NVIDIA_H100_80GB_HBM3__SmolLM2-135M-Instruct.Q4_1.gguf__bfloat16.json
timeout ${SCALE_TIMEOUT:-470} python3 experiments/project_scale.py \
  --shapes=llama3.2-1b,llama3.1-8b,qwen3-8b --attn_lens=1024,4096,16384 --dtype=bfloat16 \
  --add_profiles=smollm2-135m=$smol --output_dir=$out 2>&1 | grep -v -i warn
if [ ! -f $out/summary.md ]; then
  python3 experiments/project_scale.py --profiles_dir=$out/profiles \
    --add_profiles=smollm2-135m=$smol --output_dir=$out 2>&1 | grep -v -i warn
fi
