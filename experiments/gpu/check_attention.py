"""Does the cuDNN decode attention compute what the XLA one does? bf16 greedy outputs of both
against the float32 model (the reference), on Spec-Bench prompts.

  python experiments/gpu/check_attention.py --max_new_tokens=64

Prints, per prompt, how many leading tokens each bf16 variant shares with float32 and the
largest |logit| difference of one decode step against float32 (first prompt).
"""

import functools
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, model as model_lib  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens per generation.")
_PER_CAT = flags.DEFINE_integer("per_category", 1, "Spec-Bench questions per category.")
_LIMIT = flags.DEFINE_integer("limit", 6, "Prompts (the first of the subset).")


def step_logits(m, ids):
  """Logits [V] of one decode step after the prompt ids[:-1] (prefill then one-token forward)."""

  @functools.partial(jax.jit, static_argnums=(2,))
  def run(params, tokens, cfg):
    none = SkipMask.none(cfg.n_layers)
    cache = KVCache.create(cfg, params["embed"].dtype)
    out = model_lib.forward(params, cfg, tokens[None, :-1], cache, skip=none, attn_len=1024)
    out = model_lib.forward(params, cfg, tokens[None, -1:], out.cache, skip=none, attn_len=1024)
    return model_lib.lm_head(params, cfg, out.hidden[0, -1])

  return np.asarray(run(m.params, jnp.asarray(ids), m.cfg), np.float32)


def common_prefix(a, b):
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def main(argv):
  del argv
  ref = ks.load_model(dtype="float32")
  variants = {a: ks.load_model(dtype="bfloat16", attention=a) for a in ("xla", "cudnn")}
  print(jax.devices()[0].device_kind, {a: m.cfg.attention for a, m in variants.items()})
  items = datasets.spec_bench_subset(_PER_CAT.value)[:_LIMIT.value]
  for item in items:
    ids = ks.encode_prompt(ref, item["prompt"])
    want = ks.generate(ref, ids, _NEW.value, ignore_eos=True).output_ids
    first = item is items[0]  # one logit comparison (each prompt length compiles anew)
    ref_logits = step_logits(ref, ids) if first else None
    row = [f"{item['id']:16s} {len(ids):4d} tokens"]
    for name, m in variants.items():
      got = ks.generate(m, ids, _NEW.value, ignore_eos=True).output_ids
      err = (f", max|dlogit| vs f32 {np.abs(step_logits(m, ids) - ref_logits).max():.3f}"
             if first else "")
      row.append(f"{name}: {common_prefix(got, want):3d}/{len(want)} same as f32{err}")
    print(" | ".join(row), flush=True)


if __name__ == "__main__":
  app.run(main)
