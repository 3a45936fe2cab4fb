#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data", ".official"]:
# projection layouts on top of the cuDNN step, then the official implementation.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/gpu/decode_variants.py --attn_lens=256,4096,8192 \
  --variants=cudnn,cudnn+pad2,cudnn+f32acc --repeats=5 --tag=linear 2>&1 | grep -v -i warn | tail -9
LIMIT=${LIMIT:-0} STRATEGIES=autoregressive,knapspec timeout 360 bash experiments/gpu/run_official.sh
