#!/usr/bin/env bash
# Device machine (nvidia-h200), after ship_smollm2.sh, with carry [".data"]: the
# H200 tables of BENCHMARKS.md from configs/h200.py, one part a call (10 minutes at most each):
#   bash experiments/gpu/run_h200.sh profile_specbench_a  # latency profile, then every method on
#                                                         # the first 6 Spec-Bench categories
#   bash experiments/gpu/run_h200.sh specbench_b          # every method, the other 7 categories
#   bash experiments/gpu/run_h200.sh specbench_a          # every method, the first 6 categories,
#                                                         # with the committed profile
#   bash experiments/gpu/run_h200.sh long_hf              # every method on the 2K / 4K / 7K
#                                                         # documents, then HF generate (eager
#                                                         # and compiled) on all 16 prompts
#   bash experiments/gpu/run_h200.sh overhead             # a declining KnapSpec's host overhead
#                                                         # over AR, then AR / KnapSpec alone on
#                                                         # the Spec-Bench subset
# The profile part measures the H200 latency profile again and copies it to $OUT (the committed
# one in profiles/, where KnapSpec finds it by its key, came from there). Each benchmark writes
# results.jsonl (flushed per record), table.md and plots/ under $OUT/<part>. Flags after the
# part go to every benchmark of it, e.g.
#   bash experiments/gpu/run_h200.sh specbench_a --config.methods=ar,knapspec \
#       --config.method_options=knapspec.bucket_windows=true
set -uo pipefail
source experiments/gpu/env.sh
A=writing,roleplay,reasoning,math,coding,extraction
B=stem,humanities,translation,summarization,qa,math_reasoning,rag
bench() {  # name, time limit, config overrides...
  local name=$1 limit=$2; shift 2
  timeout $limit python3 experiments/benchmark.py --config=configs/h200.py \
    --config.output_dir=$OUT/$name "$@" 2>&1 | grep -v -i warn | grep -v "^|"
  tail -n 30 $OUT/$name/table.md 2>/dev/null
}
part=${1:?part}; shift
case $part in
  profile_specbench_a)
    timeout 200 python3 experiments/measure_profile.py --dtype=bfloat16 --attention=pallas \
      --attn_lens=256,2048,6144 2>&1 | grep -v -i warn | tail -4
    cp profiles/*H200*.json $OUT/
    bench specbench_a ${BENCH_TIMEOUT:-360} --config.long_lengths= --config.categories=$A "$@" ;;
  specbench_a)
    bench specbench_a ${BENCH_TIMEOUT:-360} --config.long_lengths= --config.categories=$A "$@" ;;
  specbench_b)
    bench specbench_b ${BENCH_TIMEOUT:-540} --config.long_lengths= --config.categories=$B "$@" ;;
  long_hf)
    bench long ${BENCH_TIMEOUT:-330} --config.specbench_per_category=0 "$@"
    timeout ${HF_TIMEOUT:-230} python3 experiments/bench_hf.py --modes=eager,compiled \
      --specbench_per_category=1 --long_lengths=2000,4000,7000 --max_new_tokens=128 \
      --repeats=2 --output=$OUT/hf.jsonl 2>&1 | grep -E "^\{|Error" | cut -c1-160 ;;
  overhead)
    timeout 100 python3 experiments/plain_overhead.py --dtype=bfloat16 --max_new_tokens=16,128 \
      --repeats=20 2>&1 | grep -v -i warn | grep -v "^I1"
    bench ar_knapspec ${BENCH_TIMEOUT:-170} --config.long_lengths= --config.methods=ar,knapspec "$@" ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
