#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (carry [".data"]): is the bf16 text a choice of XLA's
# autotuner? (experiments/gpu/text_by_autotuning.py). Qwen2.5-Coder-1.5B's AR text on the 16K and
# 28K documents, 128 tokens, against the AR texts two H100s (sessions 33, 34) and an H200
# (session 29) recorded, in fresh processes, each with a fresh compilation cache:
#   default        XLA's defaults (its autotuning results come back as $OUT/autotune_results.tgz)
#   again          the same, once more (does one machine's autotuner choose the same kernels?)
#   autotune_off   --xla_gpu_autotune_level=0: XLA's heuristic choice, no timing
#   loaded         only with AUTOTUNE_FROM=FILE (a committed autotune_results.tgz of another
#                  machine): its results put in the fresh cache before the process starts
# About a minute a mode. -> $OUT/text_<mode>.json
#   [AUTOTUNE_FROM=results/h100/text_by_autotuning_sessionNN/autotune_results.tgz] \
#     bash experiments/gpu/run_text_by_autotuning.sh
set -uo pipefail
source experiments/gpu/qwen_env.sh || exit 1
REFS="results/h100_qwen/bucket_windows_docs_2k_16k_28k_1024/results.jsonl.gz
results/h100_qwen/docs_1024_session34/bucket_windows_docs_first/results.jsonl.gz
results/h200_qwen/draft_vocab16384_docs_2k_16k_28k_1024/results.jsonl.gz"
for mode in ${MODES:-default again autotune_off} ${AUTOTUNE_FROM:+loaded}; do
  cache=/tmp/text_cache_$mode
  rm -rf "$cache"
  # where XLA keeps its autotuning results under this cache (compile_cache.shared_xla_caches)
  tuned=$(KNAPSPEC_CACHE=$cache python3 -c 'from knapspec_jax import compile_cache as c
print(c.shared_xla_caches()[c.AUTOTUNE_CACHE])') || exit 1
  mkdir -p "$tuned"
  flags=""
  [ "$mode" = autotune_off ] && flags="--xla_gpu_autotune_level=0"
  [ "$mode" = loaded ] && tar xzf "$AUTOTUNE_FROM" -C "$tuned"
  echo "=== $mode (XLA_FLAGS='$flags')"
  XLA_FLAGS="$flags" KNAPSPEC_CACHE=$cache timeout 240 python3 \
    experiments/gpu/text_by_autotuning.py --gguf="$QWEN_GGUF" --label=$mode \
    --output="$OUT/text_$mode.json" $REFS 2>&1 | grep -v -i "warn\|libtpu"
  if [ "$mode" = default ]; then
    tar czf "$OUT/autotune_results.tgz" -C "$tuned" .
    echo "autotuning results: $(ls "$tuned" | wc -l) files, $(du -sh "$OUT/autotune_results.tgz" | cut -f1) packed"
  fi
done
