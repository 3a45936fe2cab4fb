#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (source experiments/gpu/qwen_env.sh first): measures the
# latency profile of Qwen2.5-Coder-1.5B-Instruct in bfloat16 with the default kernels (Pallas
# one-query attention, projections padded to two rows) and saves it into profiles/ of this
# machine's copy of the repository, where a later call's benchmark finds it first (over the
# committed one it replaces), and into $OUT. About 4.5 minutes with the model load at four
# lengths (session 6); the 28672-position length came in session 8, two loop lengths per
# program in session 24 (latency.LOOP_RATIO).
set -uo pipefail
: "${QWEN_GGUF:?source experiments/gpu/qwen_env.sh first}"
KNAPSPEC_MODEL=$QWEN_GGUF timeout 450 python3 experiments/measure_profile.py --dtype=bfloat16 \
  --attn_lens=256,2048,8192,16384,28672 --output=profiles 2>&1 | grep -v -i warn
cp profiles/*H200*qwen*.json "$OUT"/ 2>/dev/null
ls "$OUT"
