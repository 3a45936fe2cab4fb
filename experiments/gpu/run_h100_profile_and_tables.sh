#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]. Parts, one call each
# (the device keeps /root while warm; the profile measured by "profile" is reused by the others):
#   profile    the H100 latency profile of the current code (cuDNN decode attention), then AR at
#              53 / 4004 / 7511 prompt tokens (BENCHMARKS.md section 1)
#   specbench  every method on the Spec-Bench subset (configs/h100.py)
#   long       every method on the 2K / 4K / 7K documents (configs/h100.py)
set -uo pipefail
source experiments/gpu/env.sh
name=NVIDIA_H100_80GB_HBM3__SmolLM2-135M-Instruct.Q4_1.gguf__bfloat16.json
case ${1:?profile, specbench or long} in
  profile)
    python3 experiments/measure_profile.py --dtype=bfloat16 --output=/root/$name 2>&1 \
      | grep -v -i warn | tail -15
    cp /root/$name $OUT/ && cp /root/$name profiles/$name
    python3 experiments/benchmark.py --dtype=bfloat16 --methods=ar --specbench_per_category=1 \
      --categories=writing --long_lengths=4000,7500 --max_new_tokens=256 --repeats=3 \
      --output_dir=$OUT/ar 2>&1 | grep -v -i warn | tail -8 ;;
  specbench|long)
    cp /root/$name profiles/$name
    bash experiments/gpu/run_benchmark.sh $1 ;;
esac
