#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (carry [".data"]): the long-context documents on
# Qwen2.5-Coder-1.5B-Instruct, AR and KnapSpec only, 1024 new tokens, one process (run_qwen.sh's
# records and table come back under $OUT/h200_qwen/): the command behind BENCHMARKS.md 10.33's
# three-process table, shortened so that a batch of device calls stays short.
#   LENGTHS=2000,16000,28000 bash experiments/gpu/run_qwen_documents.sh \
#       [--config.method_options=knapspec.bucket_windows=true ... further benchmark flags]
set -uo pipefail
source experiments/gpu/qwen_env.sh || exit 1
BENCH_TIMEOUT=${BENCH_TIMEOUT:-575} bash experiments/gpu/run_qwen.sh --config.methods=ar,knapspec \
  --config.long_lengths="${LENGTHS:-2000,16000,28000}" --config.specbench_per_category=0 \
  --config.max_new_tokens=1024 --config.long_max_new_tokens=1024 --config.ar_alone=False \
  --config.plots=False "$@"
