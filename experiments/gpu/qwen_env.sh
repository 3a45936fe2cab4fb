# Source on the device machine after ship_qwen.sh: the carried wheels first on the path, and
# QWEN_GGUF, the joined GGUF, joined from /root/q/chunk* and checked by size and sha256
# (packaged_models.join_parts; a mismatch stops here with the part's or the hash's error).
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_DATA=$PWD/.data KNAPSPEC_CACHE=/root/cache
export QWEN_GGUF=/root/q/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
export QWEN_CHUNK_MIB=32  # ship_qwen.sh's chunk size (split -b 32M)
if [ ! -f "$QWEN_GGUF" ]; then
  python3 - <<'PY' || return 1 2>/dev/null || exit 1
import os, pathlib
from knapspec_jax.packaged_models import MODELS, join_parts
m = MODELS["qwen2.5-coder-1.5b"]
chunks = sorted(pathlib.Path("/root/q").glob("chunk*"))  # ship_qwen.sh's chunks, in order
need = -(-m.size // (int(os.environ["QWEN_CHUNK_MIB"]) << 20))
assert len(chunks) == need, f"{len(chunks)} of {need} chunks on this machine"
join_parts(chunks, pathlib.Path(os.environ["QWEN_GGUF"]), m.size, m.sha256, m.name)
print("joined and checked (size, sha256):", os.environ["QWEN_GGUF"])
PY
  rm -f /root/q/chunk*
fi
