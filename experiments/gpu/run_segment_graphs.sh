#!/usr/bin/env bash
# Device machine: whether a speculation segment compiled with CUDA graphs over its loops
# (ModelConfig.segment_graphs: XLA's command buffers taking in while loops and conditionals, for
# that program only) runs a round faster than with XLA's defaults. BENCHMARKS.md 10.8 measured
# the segments 1-3% faster with those command buffers for the whole process, where AR's loops
# slowed; 10.33 left 1.1-2.1% of a round at 16K outside its draft steps and verify. For the
# documents' kept draft (10 + 8 sublayers at gamma 4, session 29) at contexts 2000 / 16000 /
# 28000, at thresholds 0 and 0.7, both compiles timed in one process (round_terms.py
# --segment_graphs=0,1). Nothing to carry: random bf16 weights of the Qwen2.5-1.5B shape; after
# ship_qwen.sh and `source experiments/gpu/qwen_env.sh`, the real weights (QWEN_GGUF) with
# DRAFT_VOCAB (default 16384) instead. About 3 minutes. -> $OUT/segment_graphs_<context>.json
# If the rounds are faster: the documents with --config.segment_graphs=True (README's command).
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_CACHE=${KNAPSPEC_CACHE:-/tmp/knapspec_cache}
MASK=00001000101000001111111101110100000000000000000010110000
for context in 2000 16000 28000; do
  timeout 170 python3 experiments/gpu/round_terms.py --context=$context --gammas=4 \
    --thresholds=0,0.7 --masks=$MASK --segment_graphs=0,1 \
    ${QWEN_GGUF:+--gguf=$QWEN_GGUF --draft_vocab=${DRAFT_VOCAB:-16384}} \
    --output="$OUT/segment_graphs_$context.json" 2>&1 | grep -v -i warn
done
