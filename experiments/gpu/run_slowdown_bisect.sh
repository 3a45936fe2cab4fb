#!/usr/bin/env bash
# Device machine (nvidia-h200), after `bash experiments/gpu/ship_qwen.sh setup` (its wheels;
# nothing else to ship): where the same-process slowdown comes from (issue 14 item 7,
# BENCHMARKS.md 10.19). same_process_slowdown.py --bisect on random weights of the
# Qwen2.5-1.5B shape with the committed H200 Qwen profile, fixed and KnapSpec as the other
# methods, and XLA's lines about CUDA-graph updates and evictions counted per stage. About 5
# minutes. Extra flags go to the script (e.g. --model=$QWEN_GGUF --random_shape= after the GGUF
# is joined). -> $OUT/slowdown_bisect.json and .log
set -uo pipefail
: "${OUT:?set OUT to the folder whose contents come back}"
source experiments/gpu/env.sh
export TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3
profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_pallas_windows__bfloat16.json
timeout "${BISECT_TIMEOUT:-540}" python3 experiments/gpu/same_process_slowdown.py \
  --random_shape=qwen2.5-1.5b --profile=$profile --new_tokens=1024 --repeats=3 --idle_s=1 \
  --bisect --others=fixed,knapspec --output=$OUT/slowdown_bisect.json \
  --xla_log_patterns="Execute command buffer,Update command buffer,Evict,warm up iteration" "$@" 2>&1 \
  | grep -v -i warn | tee $OUT/slowdown_bisect.log | cut -c1-400 | tail -40
