#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (carry .whl, .data and the chunks): session 29's kept draft
# (10 + 8 sublayers at gamma 4, drafts scoring 16384 tokens; chosen at context 2192 and borrowed
# at 16K and 28K in results/h200_qwen/draft_vocab16384_docs_2k_16k_28k_1024) pinned at every
# bucket of each document, decoded in 64-round windows and to each bucket's end
# (KnapSpecConfig.bucket_windows), paired with AR, 1024 new tokens, 5 repeats
# (kept_draft_windows.py). The records of 309 timed KnapSpec runs on Qwen put the host's time
# between windows at 2.0 ms a window, beside a call's 1.4 ms (BENCHMARKS.md 10.35): this
# measures what fewer windows give, and (--host_profile) what one more window costs the host in
# device reads, program calls and eager device operations. About 4 minutes.
# CONTEXTS="2000 16000 28000" by default. The decisions are priced with the committed H200
# profile on any card (the draft is pinned: no decision depends on it, and no profile is
# measured). -> $OUT/kept_draft_windows_<context>.json
set -uo pipefail
source experiments/gpu/qwen_env.sh
MASK=00001000101000001111111101110100000000000000000010110000
for context in ${CONTEXTS:-2000 16000 28000}; do
  timeout 190 python3 experiments/kept_draft_windows.py --model="$QWEN_GGUF" --dtype=bfloat16 \
    --draft_vocab=16384 --prompt_tokens=$context --new_tokens=1024 --gamma=4 --repeats=5 \
    --masks=$MASK --host_profile --output="$OUT/kept_draft_windows_$context.json" \
    --profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_step2_pallas_windows_draftvocab16384__bfloat16.json \
    2>&1 | grep -v -i warn
done
