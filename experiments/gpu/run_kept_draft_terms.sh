#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (carry .whl, .data and the chunks): the kept draft of the
# documents' runs (9 + 10 sublayers at gamma 4, chosen at context 2174 in session 24 and
# borrowed at 16K and 28K; its bits from results/h200_qwen/step_rows2_docs_2k_16k_28k_1024) on
# the real weights at the three documents' contexts: its rounds against its draft steps and
# verifies, each timed alone (round_terms.py). Session 27's fit over the three runs' 45 windows
# at 16K put its draft step at 1.299 +- 0.021 ms where the profile says 1.155 (BENCHMARKS.md
# 10.31): this measures it, at threshold 0 (every round drafts 4) and at KnapSpec's 0.7 (the
# drafts end at the confidence exit, as in the runs; on a cache of random entries most end
# early): whether a round costs its forwards per round x the draft step + the verify, with and
# without exits. About 4 minutes. DRAFT_VOCAB=16384: the same with drafts that score 16384
# tokens (load_model's draft_vocab), in a second call. -> $OUT/kept_draft_terms_<context>.json
set -uo pipefail
source experiments/gpu/qwen_env.sh
MASK=00011000111000011111000000010001111110000000000010010000
for context in 2000 16000 28000; do
  timeout 150 python3 experiments/gpu/round_terms.py --gguf="$QWEN_GGUF" --context=$context \
    --gammas=4 --thresholds=0,0.7 --masks=$MASK --draft_vocab="${DRAFT_VOCAB:-0}" \
    --output="$OUT/kept_draft_terms_$context.json" \
    2>&1 | grep -v -i warn
done
