#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: the H100 tables of
# BENCHMARKS.md from configs/h100.py, in parts that fit one call each:
#   bash experiments/gpu/run_benchmark.sh specbench   # every method, Spec-Bench subset
#   bash experiments/gpu/run_benchmark.sh long        # every method, 2K / 4K / 7K documents
#                                                     # (LONG_LENGTHS=2000: one length a call)
#   bash experiments/gpu/run_benchmark.sh ar_official # AR alone on the official run's 15 prompts
#   bash experiments/gpu/run_benchmark.sh hf          # HF generate, eager, same prompts
#   bash experiments/gpu/run_benchmark.sh hf_compiled # HF generate, StaticCache + torch.compile
# Each writes results.jsonl (flushed per record: a run cut by its time limit keeps what it
# finished), table.md and plots/ under $OUT/<part>. ATTENTION=xla|pallas|cudnn picks the
# one-query attention kernel (default: load_model's, pallas on a GPU in bfloat16); KnapSpec finds
# the kernel's latency profile in profiles/ by its key (Model.profile_name).
set -uo pipefail
source experiments/gpu/env.sh
part=${1:?specbench, long or hf}
limit=${BENCH_TIMEOUT:-560}
attn=${ATTENTION:+--config.attention=$ATTENTION}
case $part in
  specbench)
    timeout $limit python3 experiments/benchmark.py --config=configs/h100.py $attn \
      --config.long_lengths= --config.output_dir=$OUT/specbench 2>&1 | grep -v -i warn ;;
  long)
    lengths=${LONG_LENGTHS:-2000,4000,7000}
    timeout $limit python3 experiments/benchmark.py --config=configs/h100.py $attn \
      --config.specbench_per_category=0 --config.long_lengths=$lengths \
      --config.output_dir=$OUT/long_${lengths//,/_} 2>&1 | grep -v -i warn ;;
  ar_official)  # AR alone (its own process, as the official AR ran), the official run's prompts
    timeout $limit python3 experiments/benchmark.py --config=configs/h100.py $attn \
      --config.methods=ar --config.noise_floor=False --config.long_lengths=2000,4000 \
      --config.max_new_tokens=128 --config.long_max_new_tokens=128 --config.repeats=5 \
      --config.output_dir=$OUT/ar_official 2>&1 | grep -v -i warn | tail -3
    python3 experiments/compare_official.py \
      --official=results/h100/session2_2026-11-23/official.jsonl \
      --ours=$OUT/ar_official/results.jsonl | tee $OUT/ar_official/vs_official.md ;;
  hf|hf_compiled)
    mode=$([ $part = hf ] && echo eager || echo compiled)
    timeout $limit python3 experiments/bench_hf.py --modes=$mode \
      --long_lengths=100,2000,4000,7000 --max_new_tokens=128 --repeats=2 \
      --output_json=$OUT/hf_$mode.json 2>&1 | grep -E "^\{|Error" ;;
  *) echo "unknown part $part"; exit 2 ;;
esac
