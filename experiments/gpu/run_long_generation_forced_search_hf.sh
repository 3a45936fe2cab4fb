#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: methods on long
# context with AR's own rerun as the noise floor; a long generation where searches are
# affordable; KnapSpec forced to search (decisions shown); HF generate with torch.compile.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec --noise_floor \
  --long_lengths=2000,4000,6500 --max_new_tokens=1024 --output_dir=$OUT/long 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec --noise_floor \
  --long_lengths=2000 --max_new_tokens=4096 --output_dir=$OUT/longgen 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar,knapspec --long_lengths=2000,6500 \
  --specbench_per_category=1 --categories=writing,summarization --max_new_tokens=1024 \
  --method_options=knapspec.search_budget=1.0,knapspec.interval=32 --output_dir=$OUT/forced \
  2>&1 | grep -v -i warn
timeout 240 python3 experiments/bench_hf.py --modes=compiled --long_lengths=100,4000,7500 \
  --max_new_tokens=128 --output_json=$OUT/hf_compiled.json 2>&1 | grep -E "^\{|Error"
