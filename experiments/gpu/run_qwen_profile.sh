#!/usr/bin/env bash
# Device machine, after ship_qwen.sh (source experiments/gpu/qwen_env.sh first): measures the
# latency profile of Qwen2.5-Coder-1.5B-Instruct in bfloat16 with the default kernels (Pallas
# one-query attention, projections padded to two rows) and saves it into the user cache of this
# machine ($KNAPSPEC_CACHE/profiles) and into $OUT. A benchmark reads the committed profiles/
# first, and every call brings the committed files over again, so a later call that is to use
# this one copies it there first: cp $KNAPSPEC_CACHE/profiles/*.json profiles/
# About 4.5 minutes with the model load at four lengths (session 6); the 28672-position length
# came in session 8, two loop lengths per program in session 24 (latency.LOOP_RATIO).
set -uo pipefail
: "${QWEN_GGUF:?source experiments/gpu/qwen_env.sh first}"
mkdir -p "$KNAPSPEC_CACHE/profiles"
# DRAFT_VOCAB=16384: the profile of drafts that score 16384 tokens (load_model's draft_vocab).
KNAPSPEC_MODEL=$QWEN_GGUF timeout 450 python3 experiments/measure_profile.py --dtype=bfloat16 \
  --attn_lens=256,2048,8192,16384,28672 --draft_vocab="${DRAFT_VOCAB:-0}" \
  --output="$KNAPSPEC_CACHE/profiles" 2>&1 | grep -v -i warn
cp "$KNAPSPEC_CACHE"/profiles/*.json "$OUT"/ 2>/dev/null
ls "$OUT"
