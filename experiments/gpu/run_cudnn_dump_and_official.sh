#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data", ".official"]:
# the cuDNN step's kernels and its outputs against float32, then the official implementation.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/gpu/decode_variants.py --attn_lens=8192 --variants=cudnn --dump_body=40 \
  --repeats=3 --tag=dump 2>&1 | grep -v -i warn | tail -42
timeout 200 python3 experiments/gpu/check_attention.py --max_new_tokens=64 --limit=6 2>&1 \
  | grep -v -i warn | tail -8
STRATEGIES=autoregressive,knapspec timeout 300 bash experiments/gpu/run_official.sh
