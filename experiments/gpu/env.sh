# Source on the device machine after ship_smollm2.sh: puts the carried wheels (transformers 5.23
# as pinned in setup.py, gguf) first on the path and, once every chunk has come, joins SmolLM2's
# GGUF from them, checked by size and sha256 (join_chunks.py; a mismatch stops here).
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_MODEL=/root/m/SmolLM2-135M-Instruct.Q4_1.gguf KNAPSPEC_DATA=$PWD/.data
if [ ! -f "$KNAPSPEC_MODEL" ] && ls /root/m/chunks/chunk* >/dev/null 2>&1; then
  python3 experiments/gpu/join_chunks.py smollm2-135m /root/m/chunks "$KNAPSPEC_MODEL" \
    || return 1 2>/dev/null || exit 1
fi
