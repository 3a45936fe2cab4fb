"""Does the knapsack move its skips toward attention as the context grows? (KnapSpec's claim)

  python experiments/skip_shift.py --lengths=100,4000,6500 --searches=6

For each prompt: prefill, decode plainly, and every `every` tokens run the knapsack search with
the device's latency profile (integer weights at that context) and the TPT selection with no
decline margin and no compile charge; print the best candidate's attention/MLP skip counts.
"""

import pathlib
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, decoding, knapsack, methods, selection  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["100", "4000", "6500"], "Prompt lengths (<300: a "
                             "Spec-Bench writing question).")
_SEARCHES = flags.DEFINE_integer("searches", 6, "Searches per prompt.")
_EVERY = flags.DEFINE_integer("every", 16, "Plain tokens between searches.")
_R = flags.DEFINE_integer("n_ref", 16, "Reference tokens.")


def main(argv):
  del argv
  model = ks.load_model()
  profile = methods.profile_for(model)
  print(f"profile: {profile.device}")
  print("| prompt tokens | context | weights (attn, MLP) | best attn skipped | best MLP skipped "
        "| gamma | alpha | predicted x AR |")
  print("|---|---|---|---|---|---|---|---|")
  summary = []
  for n in map(int, _LENGTHS.value):
    item = (datasets.spec_bench_subset(1, ["writing"])[0] if n < 300
            else datasets.long_document_prompt(model.tokenizer, n))
    ids = datasets.encode(model.tokenizer, item)
    cache = KVCache.create(model.cfg)
    logits, cache = decoding.prefill(model.params, model.cfg, ids, cache, model.compiled)
    state = decoding.init_state(cache, logits, _SEARCHES.value * _EVERY.value + _R.value + 2, ())
    counts = []
    for _ in range(_SEARCHES.value):
      state = decoding.run_ar(model.params, model.cfg, state, model.compiled,
                              max_tokens=_EVERY.value if counts else _R.value)
      from knapspec_jax.controller import confirmed_tokens
      tokens = confirmed_tokens(ids, state)
      p = len(tokens)
      attn_len = decoding.attn_bucket(p + 11, state.cache.capacity)
      w = knapsack.integer_weights(profile.t_attn(attn_len), profile.t_mlp)
      result = knapsack.search(model.params, model.cfg, state.cache, tokens[p - _R.value:],
                               p - _R.value, *w, model.compiled)
      cands = [selection.Candidate(c.skip, selection.smoothed_alpha(c.agreement, _R.value))
               for c in knapsack.candidates(result) if c.skip.n_skipped]
      table = selection.tpt_table(cands, profile, attn_len, 10)
      i, g = divmod(int(table.argmax()), table.shape[1])
      best = cands[i]
      ar = 1 / profile.t_step(None, attn_len)
      a, m = len(best.skip.attn_skipped), len(best.skip.mlp_skipped)
      counts.append((a, m))
      print(f"| {len(ids)} | {p} | {w} | {a} | {m} | {g + 1} | {best.alpha:.2f} | "
            f"{table[i, g] / ar:.2f} |", flush=True)
    a = statistics.mean(c[0] for c in counts)
    m = statistics.mean(c[1] for c in counts)
    summary.append((len(ids), a, m))
  print()
  print("| prompt tokens | mean attention skipped | mean MLP skipped | attention share |")
  print("|---|---|---|---|")
  for n, a, m in summary:
    print(f"| {n} | {a:.1f} | {m:.1f} | {a / max(a + m, 1e-9):.2f} |")


if __name__ == "__main__":
  app.run(main)
