#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: the Pallas split-KV
# decode attention (load_model(attention="pallas")) on the H100, one call per part:
#   check    1. determinism: three AR runs of one 2K prompt per kernel, where outputs first differ;
#            2. ms/token and kernels per decode step at attention lengths 4096 and 8192,
#               xla / pallas / cudnn (one call holds at most 10 minutes);
#            3. AR tokens/s through the API at 53 / 4004 / 7511 prompt tokens (section 1).
#   profile  its latency profile, saved under profiles/ (where run_benchmark.sh's KnapSpec runs
#            find it by key) and copied to $OUT, to commit in profiles/.
set -uo pipefail
source experiments/gpu/env.sh
case ${1:-check} in
  check)
    python3 experiments/gpu/check_determinism.py --variants=pallas,xla --n_tokens=2000 \
      --max_new_tokens=1024 2>&1 | grep -v -i warn
    python3 experiments/gpu/decode_variants.py --attn_lens=4096,8192 \
      --variants=xla,pallas,cudnn --repeats=5 2>&1 | grep -v -i warn
    python3 experiments/benchmark.py --dtype=bfloat16 --attention=pallas --methods=ar \
      --specbench_per_category=1 --categories=writing --long_lengths=4000,7500 \
      --max_new_tokens=256 --repeats=3 --output_dir=$OUT/ar_pallas 2>&1 | grep -v -i warn | tail -8 ;;
  profile)
    python3 experiments/measure_profile.py --dtype=bfloat16 --attention=pallas 2>&1 \
      | grep -v -i warn | tail -12
    cp profiles/*pallas*.json $OUT/ ;;
  *) echo "unknown part $1"; exit 2 ;;
esac
