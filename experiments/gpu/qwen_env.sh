# Source on the device machine after ship_qwen.sh: the carried wheels first on the path, and
# QWEN_GGUF, the joined GGUF, joined from /root/q/chunk* and checked by size and sha256
# (join_chunks.py; a missing chunk or a mismatch stops here with its error).
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_DATA=$PWD/.data KNAPSPEC_CACHE=/root/cache
export QWEN_GGUF=/root/q/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
if [ ! -f "$QWEN_GGUF" ]; then
  python3 experiments/gpu/join_chunks.py qwen2.5-coder-1.5b /root/q "$QWEN_GGUF" \
    || return 1 2>/dev/null || exit 1
fi
