#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: HF generate with
# StaticCache + torch.compile (mode default) at three prompt lengths.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/bench_hf.py --modes=compiled --long_lengths=100,4000,7500 --max_new_tokens=128 \
  --repeats=2 --output_json=$OUT/hf_compiled.json 2>&1 | grep -E "^\{|Error"
