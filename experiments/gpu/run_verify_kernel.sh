#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): issue 14 item 2, a verify window against a
# one-token step with the Pallas kernel (decode_attention.py, now T <= 16 queries) and with XLA's
# attention (what verify ran before), Qwen2.5-1.5B and Llama-3.1-8B shapes in bf16 at buckets 1K
# and 16K, T = 1, 4, 8, 11: ms per forward, verify / step, kernels per loop body; and whether AR
# and a verify window round alike (kernel alone, model logits). Budget 480 s of the call's 600,
# compiles included. -> $OUT/verify_kernel.json
set -uo pipefail
source experiments/gpu/env.sh
export KNAPSPEC_CACHE=/tmp/knapspec_cache
timeout 570 python3 experiments/gpu/verify_kernel.py --budget_s=480 2>&1 | grep -v -i warn
