#!/usr/bin/env bash
# Device machine (nvidia-h200), after `bash experiments/gpu/ship_qwen.sh setup` (its wheels;
# nothing else to ship): which program's first run puts the process in the slow state
# (BENCHMARKS.md 10.23-10.24). same_process_slowdown.py --trigger="${TRIGGERS:-all}" on
# random weights of the Qwen2.5-1.5B shape: one fresh child process per trigger. Each times AR,
# runs one program, times AR again, then AR with its programs loaded anew, then AR after the
# program's second run. The programs: nothing (the drift), a matmul through Triton, the same
# through cuBLAS, the knapsack search as the engine compiles it (three cuBLASLt matmuls), the
# search with every matmul asked of Triton, without CUDA graphs, and with its loops in them,
# and programs with one feature of the search each (a loop with a device trip count, a
# weights-sized temp, an argsort), and cuBLASLt alone (a matmul asking for it, the search's
# logits matmul). About 40 s per trigger. TRIGGERS=a,b,.. picks some (default
# all); STACK_BYTES=N sets the CUDA context's per-thread stack limit first (--stack_bytes);
# HLO=1 writes each trigger's and AR's optimized programs to $OUT/hlo.
# -> $OUT/slowdown_triggers[_stackN].json
set -uo pipefail
: "${OUT:?set OUT to the folder whose contents come back}"
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/root/cache
profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_pallas_windows__bfloat16.json
timeout "${TRIGGERS_TIMEOUT:-540}" python3 experiments/gpu/same_process_slowdown.py \
  --random_shape=qwen2.5-1.5b --profile=$profile --new_tokens=1024 --repeats=3 \
  --trigger="${TRIGGERS:-all}" --stack_bytes="${STACK_BYTES:-0}" ${HLO:+--hlo_dir=$OUT/hlo} \
  --output=$OUT/slowdown_triggers${STACK_BYTES:+_stack$STACK_BYTES}.json 2>&1 \
  | grep -v -i warn | grep -v '^\[[a-z_]*\] I[0-9]' | cut -c1-400 | tail -40
