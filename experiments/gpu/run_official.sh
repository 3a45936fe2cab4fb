#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data", ".official"]: the
# official PyTorch KnapSpec (a git-ignored checkout in .official) on the same prompts, with the
# device's own torch/transformers (the official code needs transformers 4.x cache APIs) and gguf
# as installed by ship_smollm2.sh setup (wheels.sh install).
set -uo pipefail
source experiments/gpu/env.sh
PYTHONPATH=/root/gguf_only python3 experiments/gpu/run_official.py --official_dir=.official \
  --prompts=.data/official_prompts.json --strategies=${STRATEGIES:-autoregressive,knapspec} \
  --max_new_tokens=128 --limit=${LIMIT:-0} --output=$OUT/official.jsonl 2>&1 | grep -v -i warn | tail -60
