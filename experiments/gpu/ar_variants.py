"""Which decode-step layout is fastest on this device? Times the AR on-device loop per token.

  python experiments/gpu/ar_variants.py --attn_lens=256,4096,8192

Variants: params as loaded (separate q/k/v and gate/up matmuls) vs fused projections.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import decoding, latency  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402

_LENS = flags.DEFINE_list("attn_lens", ["256", "4096", "8192"], "Attention buckets.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "dtype")
_STEPS = flags.DEFINE_integer("steps", 64, "tokens per timed loop")


def main(argv):
  del argv
  m = ks.load_model(dtype=_DTYPE.value, fuse=False)
  variants = {"separate": m.params, "fused": model_lib.fuse_projections(m.params)}
  dtype = ks.api.DTYPES[_DTYPE.value]
  print(latency.device_name())
  for n in map(int, _LENS.value):
    base = latency.random_cache(m.cfg, dtype, n - _STEPS.value - 1, jax.random.PRNGKey(0))
    for name, params in variants.items():
      compiled = CompileCache()

      def make_args():
        cache = jax.tree.map(jnp.copy, base)
        state = decoding.init_state(cache, jnp.zeros((m.cfg.vocab_size,), jnp.float32),
                                    _STEPS.value + 1, ())
        return params, state
      fn = compiled.get(decoding.ARSegmentStatics(m.cfg, n), make_args())
      t = latency.median_seconds(fn, make_args, 5) / _STEPS.value
      print(f"attn_len {n:5d} {name:9s} {t * 1e3:7.3f} ms/token  {1 / t:7.1f} tok/s "
            f"(compile {compiled.stats.compile_s:.1f} s)", flush=True)


if __name__ == "__main__":
  app.run(main)
