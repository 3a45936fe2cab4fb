#!/usr/bin/env bash
# The device machine's Python has jax and torch, not gguf, this transformers (5.23, as pinned in
# setup.py) or ml_collections: the ship scripts (ship_qwen.sh, ship_smollm2.sh) bring them as
# wheels.
#   bash experiments/gpu/wheels.sh download   the dev machine, in the project's venv: the wheels
#                                             into .whl, ../shared/data into .data (both
#                                             git-ignored through .git/info/exclude, with .model)
#   bash experiments/gpu/wheels.sh install    the device machine, with carry [".whl"]: into
#                                             /root/site (env.sh and qwen_env.sh put it first on
#                                             PYTHONPATH), gguf alone into /root/gguf_only (for the
#                                             official code on the device's own transformers)
set -euo pipefail
case ${1:?download or install} in
  download)
    for ignored in /.whl/ /.model/ /.data/; do
      grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude
    done
    rm -rf .whl .data && mkdir -p .whl
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 transformers==5.23.0 \
      ml_collections==1.1.0 jinja2
    cp -r ../shared/data .data
    ls .whl ;;
  install)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /root/site .whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /root/gguf_only .whl/gguf-*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PYTHONPATH=/root/site python3 -c "import jax, transformers; print('jax', jax.__version__, \
jax.devices(), 'transformers', transformers.__version__)" ;;
  *) echo "unknown mode $1"; exit 2 ;;
esac
