#!/usr/bin/env bash
# Device machine, call 1 of 2: one call carries at most 64 MiB, the SmolLM2 GGUF is 98 MB.
# Here (the dev machine), first:
#   f=$(python -c "from knapspec_jax.checkpoint import default_model_path as d; print(d())")
#   mkdir -p .model && head -c 42000000 "$f" > .model/part1 && tail -c +42000001 "$f" > .model/part2
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 transformers==5.23.0 ml_collections==1.1.0
# (.model and .whl are git-ignored via .git/info/exclude). Then run this with carry
# [".model/part1", ".whl"], and within 30 s ship_part2.sh-using calls with carry [".model/part2"].
set -euo pipefail
mkdir -p /root/m
cp .model/part1 /root/m/part1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /root/site .whl/*.whl
# gguf alone, for the official code that runs on the device's own transformers (run_official.sh)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /root/gguf_only .whl/gguf-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('native torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
