#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: every method on the
# Spec-Bench subset (one item per category) and on long-context summarization, bf16, with one
# untimed run per (method, prompt) first. Uses the committed H100 profile in profiles/.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec,fixed,del,clasp \
  --long_lengths=2000,4000,6500 --max_new_tokens=1024 --output_dir=$OUT/long 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec,fixed,del,clasp \
  --specbench_per_category=1 --max_new_tokens=256 --output_dir=$OUT/specbench 2>&1 | grep -v -i warn
