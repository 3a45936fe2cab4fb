#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: KnapSpec vs AR on
# long context (AR rerun as noise floor), KnapSpec forced to search (search_budget=1), and HF
# generate with StaticCache + torch.compile.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec --noise_floor \
  --long_lengths=2000,4000,6500 --max_new_tokens=1024 --output_dir=$OUT/long 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec --long_lengths=2000,6500 \
  --specbench_per_category=1 --categories=writing --max_new_tokens=1024 \
  --method_options=knapspec.search_budget=1.0,knapspec.interval=32 --output_dir=$OUT/forced \
  2>&1 | grep -v -i warn
timeout 280 python3 experiments/bench_hf.py --modes=compiled --long_lengths=100,4000,7500 \
  --max_new_tokens=128 --repeats=2 --output_json=$OUT/hf_compiled.json 2>&1 | grep -E "^\{|Error"
