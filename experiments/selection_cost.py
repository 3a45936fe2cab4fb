"""What KnapSpec's selection pays to ask whether a (skip set, draft length) is compiled.

  python experiments/selection_cost.py            # Qwen2.5-1.5B's layer structure, tiny widths

After a search, `selection.select` asks `KnapSpecPolicy.segment_compiled` about every (candidate,
gamma) predicted to beat AR by the margin until one repays its compile; with a negative margin
(`try_below`) and no compiled draft that is hundreds of questions. Each question used to build
the segment program's abstract arguments and their shape key again (the weights' arrays, the
decode state); on the H200 run G's decisions took 97-250 ms where their searches took 49-150
(BENCHMARKS.md 10.17). The key depends only on shapes, so the policy now computes it once per
generation.

Times the questions (--skip_sets random skip sets x gamma 1..10) on one decode state, each way:
  per_check   the arguments and their key built for every question (before)
  per_policy  a fresh KnapSpecPolicy answering all of them (its key computed once)
Median of `repeats`, milliseconds. Only the structure matters here (198 weight arrays, as
Qwen2.5-1.5B's fused layout has); the widths are tiny so that it runs anywhere.
"""

import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from knapspec_jax import decoding, methods, speculative  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.config import ModelConfig  # noqa: E402
from knapspec_jax.engine import Model  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SKIPS = flags.DEFINE_integer("skip_sets", 50, "Random skip sets (each asked at gamma 1..10).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats of the whole set of questions.")

# Qwen2.5-1.5B's layer count and layout (qkv bias, tied embeddings), widths cut down.
_CFG = ModelConfig(arch="qwen2", vocab_size=256, d_model=64, d_ff=128, n_layers=28, n_heads=4,
                   n_kv_heads=2, head_dim=16, max_seq_len=4096, qkv_bias=True,
                   tie_embeddings=True, attention="xla")


def main(argv):
  del argv
  params = model_lib.fuse_projections(model_lib.init_random_params(_CFG, jax.random.PRNGKey(0),
                                                                   jnp.float32))
  model = Model(cfg=_CFG, params=params, tokenizer=None, eos_ids=(), dtype="float32",
                source="random")
  state = decoding.init_state(KVCache.create(_CFG, jnp.float32), jnp.zeros((_CFG.vocab_size,)),
                              100, ())
  rng = np.random.default_rng(0)
  questions = [(SkipMask.from_list([int(b) for b in rng.integers(0, 2, 2 * _CFG.n_layers)]), g)
               for _ in range(_SKIPS.value) for g in range(1, 11)]
  n = 2000
  bucket = lambda g: decoding.attn_bucket(n + g + 1, state.cache.capacity)

  def per_check():
    return [model.compiled.contains(speculative.segment_program(_CFG, s, g, bucket(g)),
                                    speculative.segment_args(params, state))
            for s, g in questions]

  def per_policy():
    policy = methods.KnapSpecPolicy(model, None, methods.KnapSpecConfig())
    return [policy.segment_compiled(state, s, g, n) for s, g in questions]

  assert per_check() == per_policy()  # the same answers (none compiled here)
  print(f"{len(jax.tree.leaves(params))} weight arrays; {len(questions)} questions per repeat")
  for name, fn in (("per_check", per_check), ("per_policy", per_policy)):
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    med = statistics.median(times)
    print(f"{name:10s}: {med * 1e3:7.1f} ms for {len(questions)} questions, "
          f"{med / len(questions) * 1e3:.3f} ms each (median of {len(times)})")


if __name__ == "__main__":
  app.run(main)
