#!/usr/bin/env bash
# Device machine (nvidia-h200), after `bash experiments/gpu/ship_qwen.sh setup` (its wheels;
# nothing else to ship): which state of the knapsack search's program slows every other program
# of the process (BENCHMARKS.md 10.20). same_process_slowdown.py --search_bisect on random
# weights of the Qwen2.5-1.5B shape: the search compiled, run, dropped, loaded from the
# executable store and run, loaded and not run, compiled without CUDA graphs; then one KnapSpec
# generation and AR after it. Each search stage also traces one 256-token AR generation
# (jax.profiler): the device's busy time per token against the wall span, and its top kernels.
# About 4 minutes. -> $OUT/search_bisect.json, $OUT/after_knapspec.json
set -uo pipefail
: "${OUT:?set OUT to the folder whose contents come back}"
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/root/cache
profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_pallas_windows__bfloat16.json
run() {
  timeout "$1" python3 experiments/gpu/same_process_slowdown.py --random_shape=qwen2.5-1.5b \
    --profile=$profile --new_tokens=1024 --repeats=3 "${@:2}" 2>&1 \
    | grep -v -i warn | grep -v '^I[0-9]' | cut -c1-400 | tail -20
}
run 200 --search_bisect --trace_tokens=256 --output=$OUT/search_bisect.json
run 200 --idle_s=1 --alloc_gb=1 --others=knapspec --output=$OUT/after_knapspec.json
