#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: the cuDNN decode
# attention: AR at three prompt lengths (BENCHMARKS.md section 1), its kernels per step, and
# its outputs against float32.
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar --specbench_per_category=1 \
  --categories=writing --long_lengths=4000,7500 --max_new_tokens=256 --repeats=3 \
  --output_dir=$OUT/ar 2>&1 | grep -v -i warn | tail -12
python3 experiments/gpu/decode_variants.py --attn_lens=8192 --variants=cudnn --dump_body=40 \
  --tag=dump 2>&1 | grep -v -i warn
timeout 200 python3 experiments/gpu/check_attention.py --max_new_tokens=64 2>&1 | grep -v -i warn
