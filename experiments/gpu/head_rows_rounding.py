"""Does the LM head's float32 logit for one row depend on how many rows the product has?

  python experiments/gpu/head_rows_rounding.py [--vocab=151936 --d_model=1536 --trials=20]

A verify of gamma + 1 tokens took the head's product over gamma + 1 rows and AR at a width
(generate(width=W)) over one row (padded to ModelConfig.matmul_rows) until session 44; both now
take it over W rows (model.lm_head's min_rows). model.linear keeps each row's result independent
of the other rows' values, but the backend may pick another algorithm for another row count, and
float32 sums in another order round differently: where two logits nearly tie, the argmax then
flips (session 44: KnapSpec at width 11 left AR's width-11 text at token 807 of Qwen's 16K
answer on an H100, before the change). Random bf16 weights of Qwen2.5-1.5B's head
shape; prints, per row count, how many of `trials` rows differ in any logit from the one-row
product (padded to 1 and to 2 rows, the platform's default padding first), and the largest
difference.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from knapspec_jax import api  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402

_VOCAB = flags.DEFINE_integer("vocab", 151936, "Head rows (the vocabulary).")
_D = flags.DEFINE_integer("d_model", 1536, "Hidden width.")
_TRIALS = flags.DEFINE_integer("trials", 20, "Hidden states tried.")
_ROWS = flags.DEFINE_list("rows", ["2", "4", "8", "11", "16"], "Row counts compared with one row.")


def main(argv):
  del argv
  key = jax.random.PRNGKey(0)
  w = (jax.random.normal(key, (_D.value, _VOCAB.value), jnp.float32) * 0.02).astype(jnp.bfloat16)
  head = jax.jit(lambda h, min_rows: model_lib.linear(h, w, min_rows, jnp.float32),
                 static_argnums=1)
  print(f"{jax.devices()[0].device_kind}: head [{_D.value}, {_VOCAB.value}] bf16, float32 logits")
  # The platform's own padding first (ModelConfig.matmul_rows as load_model picks it: 2 on a
  # GPU, where natural AR's head is a 2-row product), so that a cut-short run prints it.
  for min_rows in sorted((1, 2), key=lambda rows: rows != api.default_matmul_rows()):
    rng = np.random.default_rng(1)
    differ = {r: 0 for r in _ROWS.value}
    largest = {r: 0.0 for r in _ROWS.value}
    for _ in range(_TRIALS.value):
      h = jnp.asarray(rng.standard_normal((16, _D.value)), jnp.bfloat16)
      one = np.asarray(head(h[:1], min_rows))[0]
      for r in _ROWS.value:
        many = np.asarray(head(h[:int(r)], min_rows))[0]
        differ[r] += int(np.any(many != one))
        largest[r] = max(largest[r], float(np.max(np.abs(many - one))))
    print(f"one row padded to {min_rows}: " + ", ".join(
        f"{r} rows: {differ[r]}/{_TRIALS.value} differ (max {largest[r]:.2e})"
        for r in _ROWS.value))


if __name__ == "__main__":
  app.run(main)
