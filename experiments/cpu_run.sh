#!/usr/bin/env bash
# The CPU numbers of BENCHMARKS.md (float32): latency profile, AR at three prompt lengths, every
# method on the Spec-Bench subset and long-context summarization.
# Usage: experiments/cpu_run.sh [OUT_DIR [--overwrite]]; OUT_DIR defaults to a new
# results/tmp/cpu_run-<time>/. The committed runs are in results/cpu: rewrite them on purpose with
# `experiments/cpu_run.sh results/cpu --overwrite` (benchmark.py refuses a folder holding files).
set -euo pipefail
out=${1:-results/tmp/cpu_run-$(date +%Y%m%d-%H%M%S)}
overwrite=${2:-}
mkdir -p "$out"
python experiments/measure_profile.py --dtype=float32 --attn_lens=256,1024,2048,4096,8192 \
  --steps=8 2>&1 | grep -v -i warn | tee "$out/profile.log"
python experiments/benchmark.py --methods=ar --specbench_per_category=1 --categories=writing \
  --long_lengths=4000,7500 --max_new_tokens=128 --repeats=3 --output_dir="$out/ar" $overwrite \
  2>&1 | grep -v -i warn
python experiments/benchmark.py --methods=ar,knapspec,fixed,del,clasp --long_lengths=2000,4000,6500 \
  --max_new_tokens=128 --output_dir="$out/long" $overwrite 2>&1 | grep -v -i warn
python experiments/benchmark.py --methods=ar,knapspec,fixed,del,clasp --specbench_per_category=1 \
  --max_new_tokens=64 --output_dir="$out/specbench" $overwrite 2>&1 | grep -v -i warn
