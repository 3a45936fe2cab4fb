#!/usr/bin/env bash
# Device machine, nothing to carry (random bf16 weights): issue 14's 8B lines with AR's two-row
# step (ModelConfig.step_rows = 2, the GPU default since session 26, never timed at 8B): AR's
# step at widths 1 and 2 and the verify of 11 tokens at 1K and 16K positions, Llama-3.1-8B and
# Qwen3-8B shapes, and the device's read bandwidth three times (the same sum read 3867-4124 GB/s
# across session 25's processes). Then on the CPU:
#   python experiments/gpu/step_bandwidth.py --model=llama3.1-8b --read_gbps=R1,R2,R3 \
#       $OUT/llama3.1-8b.json   (and --model=qwen3-8b)
#   -> $OUT/{llama3.1-8b,qwen3-8b}.json, $OUT/read_gbps.txt
# Further flags go to step_width.py: --tall_tile_stages=2,3,4 times the verify of 11 with each
# pipelining depth of the kernel's tall tiles (ModelConfig.tall_tile_stages).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_CACHE=/tmp/knapspec_cache
for i in 1 2 3; do
  python3 -c "from knapspec_jax import latency; print(f'{latency.read_bandwidth():.1f}')" \
    | tee -a "$OUT/read_gbps.txt"
done
for model in llama3.1-8b qwen3-8b; do
  timeout 250 python3 experiments/gpu/step_width.py --model="$model" --attn_lens=1024,16384 \
    --widths=1,2 --verify=11 --repeats=3 --output="$OUT/$model.json" "$@" 2>&1 | grep -v -i warn
done
