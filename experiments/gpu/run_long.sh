#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: AR at three prompt
# lengths (issue 2) and every method on long-context summarization (issue 3), bf16.
set -uo pipefail
source experiments/gpu/env.sh
python3 -c "import jax; print(jax.devices())"
python3 experiments/measure_profile.py --output=$OUT/profile.json 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar --specbench_per_category=1 \
  --categories=writing --long_lengths=4000,7500 --max_new_tokens=256 --repeats=3 \
  --profile=$OUT/profile.json --output_dir=$OUT/ar 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec,fixed,del,clasp \
  --long_lengths=2000,4000,6500 --max_new_tokens=1024 --profile=$OUT/profile.json \
  --output_dir=$OUT/long 2>&1 | grep -v -i warn
