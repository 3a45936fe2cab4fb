#!/usr/bin/env bash
# Device machine, after ship_part1.sh, with carry [".model/part2", ".data"]: the Pallas split-KV
# decode attention (load_model(attention="pallas")) against XLA and cuDNN on the H100, one call:
#   1. determinism: three AR runs of one 2K prompt per kernel, where outputs first differ;
#   2. ms/token and kernels per decode step at three attention lengths;
#   3. AR tokens/s through the API at 53 / 4004 / 7511 prompt tokens (BENCHMARKS.md section 1).
set -uo pipefail
source experiments/gpu/env.sh
python3 experiments/gpu/check_determinism.py --variants=pallas,xla --n_tokens=2000 \
  --max_new_tokens=1024 2>&1 | grep -v -i warn
python3 experiments/gpu/decode_variants.py --attn_lens=256,4096,8192 --variants=xla,pallas,cudnn \
  --repeats=5 2>&1 | grep -v -i warn
python3 experiments/benchmark.py --dtype=bfloat16 --attention=pallas --methods=ar \
  --specbench_per_category=1 --categories=writing --long_lengths=4000,7500 --max_new_tokens=256 \
  --repeats=3 --output_dir=$OUT/ar_pallas 2>&1 | grep -v -i warn | tail -8
