"""Generates from a prompt near the model's context limit until the KV cache is full.

  python experiments/long_context.py --prompt_tokens=8000 --methods=ar,fixed,knapspec

For each method: the run must stop with stop_reason "cache_full" after exactly
max_seq_len - n_prompt + 1 new tokens (the last position's prediction is emitted, nothing is
written past the cache), the output must equal AR's, and the process's peak resident memory
(getrusage ru_maxrss) is printed after each run. The knapsack search's working set at the
prompt's attention bucket is read from XLA's memory analysis of the compiled program.

KnapSpec gets a latency profile under which drafting pays (and an unlimited search budget) so
that its search and speculation rounds run up to the cache's end instead of declining.
"""

import pathlib
import resource
import sys
import time

from absl import app, flags
import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, decoding, knapsack, model as model_lib  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .gguf file or HF directory; default SmolLM2.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 8000, "Target prompt length (tokens).")
_METHODS = flags.DEFINE_list("methods", ["ar", "fixed", "knapspec"], "Methods to run.")
_BOUND_GB = flags.DEFINE_float("bound_gb", 4.0, "Peak RSS bound to check (GiB).")


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB


def main(argv):
  del argv
  model = ks.load_model(_MODEL.value)
  cfg = model.cfg
  print(f"model loaded, peak RSS {peak_rss_gb():.2f} GiB", flush=True)
  model.profile = LatencyProfile(device="synthetic: drafting pays", model=model.name,
                                 dtype="float32", n_layers=cfg.n_layers, c0=1e-4, a0=1e-3,
                                 a1=0.0, m=1e-3, v0=0.0, v1=0.0)
  ids = datasets.encode(model.tokenizer,
                        datasets.long_document_prompt(model.tokenizer, _PROMPT_TOKENS.value))
  capacity = KVCache.capacity_for(cfg)
  expected_new = cfg.max_seq_len - len(ids) + 1
  print(f"prompt {len(ids)} tokens, context {cfg.max_seq_len}, cache capacity {capacity} "
        f"positions; a run to the cache's end gives {expected_new} new tokens", flush=True)
  cache_bytes = 2 * cfg.n_layers * capacity * cfg.n_kv_heads * cfg.head_dim * 4
  print(f"KV cache {cache_bytes / 2**20:.0f} MiB, params "
        f"{model_lib.param_bytes(model.params) / 2**20:.0f} MiB", flush=True)

  configs = {"ar": None, "fixed": ks.FixedConfig(gamma=4),
             "knapspec": ks.KnapSpecConfig(interval=8, search_budget=100.0, margin=-0.5),
             "del": ks.DelConfig(interval=8), "clasp": ks.ClaspConfig()}
  reference = None
  ok = True
  for method in _METHODS.value:
    kwargs = {} if configs[method] is None else {"config": configs[method]}
    start = time.perf_counter()
    result = ks.generate(model, ids, cfg.max_seq_len, method=method, ignore_eos=True, **kwargs)
    wall = time.perf_counter() - start
    if reference is None and method == "ar":
      reference = result.output_ids
    same = reference is None or result.output_ids == reference
    stats = result.stats
    good = (result.stop_reason == decoding.STOP_CACHE_FULL and result.new_tokens == expected_new
            and same)
    ok &= good
    print(f"{method:>9}: {result.new_tokens} new tokens, stop_reason={result.stop_reason}, "
          f"identical to AR: {same}, speculation rounds {stats.get('speculation_steps', 0)}, "
          f"prefill {result.prefill_s:.1f} s, decode {result.decode_s:.1f} s "
          f"({result.tokens_per_s:.1f} tok/s), wall {wall:.0f} s, "
          f"peak RSS so far {peak_rss_gb():.2f} GiB -> {'OK' if good else 'FAILED'}", flush=True)

  n_ref = ks.KnapSpecConfig().n_ref
  attn_len = decoding.attn_bucket(len(ids), capacity)
  search = knapsack.compile_search(model.params, cfg, model.compiled, n_ref, attn_len=attn_len)
  mem = search.memory_analysis()
  if mem is not None:
    print(f"knapsack search at attn_len {attn_len}, R={n_ref}: temp "
          f"{mem.temp_size_in_bytes / 2**20:.1f} MiB, arguments "
          f"{mem.argument_size_in_bytes / 2**20:.1f} MiB (params + cache, shared), output "
          f"{mem.output_size_in_bytes / 2**10:.1f} KiB", flush=True)
  peak = peak_rss_gb()
  print(f"peak RSS {peak:.2f} GiB (bound {_BOUND_GB.value:.1f} GiB): "
        f"{'within' if peak <= _BOUND_GB.value else 'OVER'}")
  print("ALL OK" if ok and peak <= _BOUND_GB.value else "FAILED")
  jax.clear_caches()


if __name__ == "__main__":
  app.run(main)
