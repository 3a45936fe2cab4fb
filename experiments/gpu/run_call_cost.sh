#!/usr/bin/env bash
# Device machine: where a decode window's fixed cost goes (experiments/gpu/call_cost.py: one
# segment program call against the rounds it runs, the budget as host or device scalars, beside
# a program that does nothing with the same arguments), at each context of CONTEXTS (default
# 2000,16000). Nothing to carry: random bf16 weights of the Qwen2.5-1.5B shape; after
# ship_qwen.sh and `source experiments/gpu/qwen_env.sh`, the real weights (QWEN_GGUF) with
# DRAFT_VOCAB (default 16384). About a minute a context. -> $OUT/call_cost_<context>.json
#   CONTEXTS=2000,16000 bash experiments/gpu/run_call_cost.sh [call_cost.py flags]
set -uo pipefail
export KNAPSPEC_CACHE=${KNAPSPEC_CACHE:-/tmp/knapspec_cache}
CONTEXTS=${CONTEXTS:-2000,16000}
for context in ${CONTEXTS//,/ }; do
  timeout 280 python3 experiments/gpu/call_cost.py --context=$context \
    ${QWEN_GGUF:+--gguf=$QWEN_GGUF --draft_vocab=${DRAFT_VOCAB:-16384}} \
    --output="$OUT/call_cost_$context.json" "$@" 2>&1 | grep -v -i warn
done
