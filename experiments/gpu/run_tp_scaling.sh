#!/usr/bin/env bash
# A machine of several H200s (issue 17; the device tool's nvidia-h200-x2, -x4 or -x8), nothing to
# carry (random bf16 weights): one shape's tensor-parallel profile, ms/token, bandwidth per GPU,
# collectives per step and skip-set compiles at tp = the GPU count (tp_scaling.py), then the
# KnapSpec projection from that profile (project_scale.py, labelled PROJECTION). One call each:
#   bash experiments/gpu/run_tp_scaling.sh llama3.1-70b     (then qwen2.5-72b, qwen3-32b)
#   TPS=2,4,8 LENS=1024,16384 bash experiments/gpu/run_tp_scaling.sh llama3.1-70b
# Untimed so far: how long a 70B shape's compiles take. The records are rewritten after each tp,
# so a call that runs out of time keeps the sizes it finished; where one call cannot time every
# length, give each call some (LENS=1024,16384, then LENS=65536) and project from both calls'
# profiles: project_scale.py --profiles_dir=DIR1,DIR2 fits a shape's profiles together.
# -> $OUT/tp_scaling/{tp_scaling.json, summary.md, tp<N>/profiles/<shape>.json, projection/}
set -uo pipefail
# NVLink multicast stays off (the device tool's KINDS.md), here and in every child process.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_CACHE=/tmp/knapspec_cache
shape=${1:-llama3.1-70b}
lens=${LENS:-1024,16384,65536}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
tps=${TPS:-$(nvidia-smi -L | wc -l)}
timeout "${TP_TIMEOUT:-540}" python3 experiments/gpu/tp_scaling.py --shapes="$shape" \
  --tps="$tps" --attn_lens="$lens" 2>&1 | grep -v -i warn
for dir in "$OUT"/tp_scaling/tp*/profiles; do
  tp=$(basename "$(dirname "$dir")")
  python3 experiments/project_scale.py --profiles_dir="$dir" --contexts="$lens" \
    --acceptance_fit=results/cpu/analysis/acceptance_qwen/fit.json \
    --output_dir="$OUT/tp_scaling/projection/$tp" 2>&1 | grep -v -i warn
done
