"""Is bf16 AR decoding deterministic, and does its speed depend on the cache's capacity?

  python experiments/gpu/check_determinism.py --n_tokens=2000 --max_new_tokens=1024

Runs the same AR generation three times per variant and prints tokens/s and where each run's
output first differs from the variant's first run:
  cudnn-8224  cuDNN decode attention over a cache of 8192 + 32 positions (not a multiple of
              the kernel's 128-row tiles)
  cudnn       cuDNN over the cache as KVCache.capacity_for sizes it now
  pallas      the split-KV Pallas kernel (decode_attention.py) over the same cache
  xla         XLA attention
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, kv_cache  # noqa: E402

_N = flags.DEFINE_integer("n_tokens", 2000, "Prompt length (long-document prompt).")
_NEW = flags.DEFINE_integer("max_new_tokens", 1024, "New tokens.")
_VARIANTS = flags.DEFINE_list("variants", ["cudnn-8224", "cudnn", "pallas", "xla"],
                              "Attention kernels (cudnn-8224: cuDNN with an unrounded cache).")


def main(argv):
  del argv
  current = kv_cache.KVCache.capacity_for
  for variant in _VARIANTS.value:
    if variant == "cudnn-8224":
      kv_cache.KVCache.capacity_for = staticmethod(lambda cfg: cfg.max_seq_len + kv_cache.SLACK)
    else:
      kv_cache.KVCache.capacity_for = current
    m = ks.load_model(dtype="bfloat16", attention=variant.split("-")[0])
    ids = datasets.encode(m.tokenizer, datasets.long_document_prompt(m.tokenizer, _N.value))
    runs = [ks.generate(m, ids, _NEW.value, ignore_eos=True) for _ in range(3)]
    first = runs[0].output_ids
    diffs = [next((i for i, (a, b) in enumerate(zip(first, r.output_ids)) if a != b), None)
             for r in runs]
    print(f"{variant:11s} capacity {kv_cache.KVCache.capacity_for(m.cfg)}  tok/s "
          f"{[round(r.tokens_per_s, 1) for r in runs]}  first difference from run 1: {diffs}",
          flush=True)


if __name__ == "__main__":
  app.run(main)
