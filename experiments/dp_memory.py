"""The knapsack search's working set (XLA's memory analysis of the compiled program) by
attention bucket and R, on SmolLM2 (or --model).

  python experiments/dp_memory.py --attn_lens=256,1024,4096,8192 --r_values=8,16

temp: the program's temporaries (what the search allocates while it runs); arguments: params
and the KV cache it reads (shared with decoding, not a copy).
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import knapsack  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .gguf file or HF directory; default SmolLM2.")
_ATTN = flags.DEFINE_list("attn_lens", ["256", "1024", "4096", "8192"], "Attention buckets.")
_R = flags.DEFINE_list("r_values", ["8", "16"], "Reference tokens R.")


def main(argv):
  del argv
  model = ks.load_model(_MODEL.value)
  for attn_len in map(int, _ATTN.value):
    for r in map(int, _R.value):
      program = knapsack.compile_search(model.params, model.cfg, model.compiled, r,
                                        attn_len=attn_len)
      mem = program.memory_analysis()
      print(f"knapsack search attn_len {attn_len} R={r}: temp "
            f"{mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments "
            f"{mem.argument_size_in_bytes / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
  app.run(main)
