#!/usr/bin/env bash
# Device machine, after ship_smollm2.sh, with carry [".data"]: decode-step layouts
# and XLA command-buffer settings (BENCHMARKS.md section 1).
set -uo pipefail
source experiments/gpu/env.sh
python3 -c "import torch, transformers; print('native torch', torch.__version__)" 2>&1 | tail -1
python3 experiments/gpu/decode_variants.py --attn_lens=256,4096,8192 --variants=xla,cudnn,unroll2 \
  --tag=default 2>&1 | grep -v -i warn
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN --xla_gpu_graph_min_graph_size=1" \
  python3 experiments/gpu/decode_variants.py --attn_lens=4096 --variants=xla,cudnn --tag=cmdbuf-body \
  2>&1 | grep -v -i warn
XLA_FLAGS="--xla_gpu_enable_command_buffer=" python3 experiments/gpu/decode_variants.py \
  --attn_lens=4096 --variants=xla --tag=cmdbuf-off 2>&1 | grep -v -i warn
