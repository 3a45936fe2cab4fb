"""Times the compiled knapsack search on SmolLM2 (or --model) after a real prefill.

  python experiments/time_knapsack.py --prefix_lengths=128,2000,6000 --r_values=8,16

The prefix is a long document built from Spec-Bench summarization articles, prefilled by the
full model; the R tokens that follow it are the ones the search scores. Prints one line per
(prefix, R, weights): compile time, median search time, live budgets.
"""

import json
import os
import pathlib
import statistics
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import api, decoding, knapsack  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_question.jsonl"

_MODEL = flags.DEFINE_string("model", None, "A .gguf file or HF directory; default SmolLM2-135M.")
_PREFIX = flags.DEFINE_list("prefix_lengths", ["128", "2000", "6000"], "Cached prefix lengths.")
_R = flags.DEFINE_list("r_values", ["8", "16"], "Numbers of reference tokens R.")
_WEIGHTS = flags.DEFINE_list("weights", ["1:1", "5:1"], "w_attn:w_mlp pairs.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per configuration (median reported).")
_CHUNK = flags.DEFINE_integer("chunk", knapsack.DEFAULT_CHUNK, "Budget states per sublayer call.")
_K_MAX = flags.DEFINE_integer("k_max", None, "DP table size - 1; default the largest K.")
_ATTN_LEN = flags.DEFINE_integer("attn_len", None, "One prefix bucket for every prefix length "
                                 "(default: each prefix's own bucket); the search visits only "
                                 "the prefix blocks below p0, so this isolates attention cost.")
_UNSTACKED = flags.DEFINE_bool("unstacked", False, "Pass per-layer params (stacked in the "
                               "program) instead of a stack_layers copy.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the rows here as JSON.")


def long_document_ids(model: api.Model, n_tokens: int) -> np.ndarray:
  """Token ids of Spec-Bench summarization articles joined until n_tokens are reached."""
  ids = []
  for line in DATA.read_text().splitlines():
    item = json.loads(line)
    if item["category"] == "summarization":
      ids.extend(model.tokenizer.encode(item["turns"][0] + "\n\n"))
      if len(ids) >= n_tokens:
        return np.asarray(ids[:n_tokens], np.int32)
  raise ValueError(f"the summarization items hold only {len(ids)} tokens, {n_tokens} asked")


def main(argv):
  del argv
  model = api.load_model(_MODEL.value)
  cfg = model.cfg
  prefix_lengths = [int(p) for p in _PREFIX.value]
  r_values = [int(r) for r in _R.value]
  weights = [tuple(int(w) for w in pair.split(":")) for pair in _WEIGHTS.value]
  ids = long_document_ids(model, max(prefix_lengths) + max(r_values))
  params = model.params if _UNSTACKED.value else knapsack.stack_layers(model.params)
  static = dict(chunk=_CHUNK.value, k_max=_K_MAX.value, attn_len=_ATTN_LEN.value)
  rows = []
  print(f"{model.name}, {jax.devices()[0].device_kind}, params "
        f"{'per layer' if _UNSTACKED.value else 'stacked'}, chunk {_CHUNK.value}, "
        f"load average {os.getloadavg()[0]:.1f} (other processes skew CPU timings)")
  for p0 in prefix_lengths:
    cache = KVCache.create(cfg)
    _, cache = decoding.prefill(model.params, cfg, ids[:p0], cache, model.compiled)
    for r in r_values:
      tokens = jnp.asarray(ids[p0:p0 + r])
      compiles_before = model.compiled.stats.compile_s
      run = lambda wa, wm: jax.block_until_ready(knapsack.search(
          params, cfg, cache, tokens, p0, wa, wm, model.compiled, **static))
      run(*weights[0])
      compile_s = model.compiled.stats.compile_s - compiles_before
      for wa, wm in weights:
        times = []
        for _ in range(_REPEATS.value):
          start = time.perf_counter()
          result = run(wa, wm)
          times.append(time.perf_counter() - start)
        row = dict(prefix=p0, r=r, w_attn=wa, w_mlp=wm,
                   attn_len=_ATTN_LEN.value or decoding.attn_bucket(p0 + r, cache.capacity),
                   search_s=statistics.median(times), min_s=min(times), compile_s=compile_s,
                   live=int(np.sum(result.alive)),
                   k=min(knapsack.budget_limit(wa, wm, cfg.n_layers),
                         _K_MAX.value or knapsack.max_budget(cfg.n_layers)))
        rows.append(row)
        print(f"prefix {p0:5d} (bucket {row['attn_len']:5d}) R {r:2d} w ({wa},{wm}): "
              f"search {row['search_s']:.2f} s (min {row['min_s']:.2f}), "
              f"{row['live']}/{row['k'] + 1} budgets live, compile {compile_s:.1f} s",
              flush=True)
  print(f"load average {os.getloadavg()[0]:.1f}")
  if _OUTPUT_JSON.value:
    pathlib.Path(_OUTPUT_JSON.value).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  app.run(main)
