"""What the first call of a compiled decoding program costs, against later calls (issue 13).

  python experiments/gpu/first_call.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/first_call.py --smoke    # CPU: tiny shapes, checks the script runs

BENCHMARKS.md 10.6 found drafting windows of the real model 0.8-2.3 ms per round slower than the
profile, while experiments/gpu/round_terms.py found the segment program exactly the sum of its
parts in a device loop. Both drafting windows there were the first calls of programs compiled
at warm-up and never run before. This compiles AR and speculation segment programs, then times
calls 1, 2 and 3 of each (fresh decode state each time, `rounds` rounds or tokens per call), and
the AR segment again after every other program has run (the same-process slowdown of issue 14).
It also times a draft that always stops after its first token (threshold above 1) against a
draft of length 1 (threshold 0): the confidence exit's cost. And the knapsack search (16
reference tokens ending at the context), which CompileCache does not prime: inside a generation
each bucket's search is its program's first call in the process, and on the H100 those ran
1.5-2x the profile's search time, measured after one call (BENCHMARKS.md 10.38).
-> $OUT/first_call.json
"""

from __future__ import annotations

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shapes import random_model, spread, write_records  # noqa: E402
from knapspec_jax import decoding, knapsack, latency, speculative  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_CONTEXT = flags.DEFINE_integer("context", 2000, "Cache cursor at the start.")
_ROUNDS = flags.DEFINE_integer("rounds", 16, "Rounds (or AR tokens) per call.")
_PRIME = flags.DEFINE_enum("prime", "none", ["none", "zeros", "one"],
                           "Before the timed calls, run each program once: none; on zero-filled "
                           "decode state (its loop runs no iteration); or one round / token.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/first_call.json).")


def main(argv):
  del argv
  smoke = _SMOKE.value
  rounds = 4 if smoke else _ROUNDS.value
  m = random_model(_MODEL.value, _CONTEXT.value, smoke)
  cfg, params, context, capacity = m.cfg, m.params, m.context, m.capacity
  print(f"{latency.device_name()} | jax {jax.__version__} | {m.name} | context {context} | "
        f"{rounds} rounds per call", flush=True)
  compiled = CompileCache()

  def timed(fn, make_args):
    args = make_args()
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) * 1e3

  programs = {}
  ar_len = attn_bucket(context + rounds + 1, capacity)
  ar_args = lambda: (params, m.fresh_state(rounds))
  programs["ar"] = (compiled.get(decoding.ARSegmentStatics(cfg, ar_len), ar_args()), ar_args,
                    rounds)
  sets = [(1, 1, 1)] if smoke else [(8, 4, 2), (16, 12, 4)]
  for n_attn, n_mlp, gamma in sets:
    skip = SkipMask.from_layers(cfg.n_layers, attn=spread(cfg.n_layers, n_attn),
                                mlp=spread(cfg.n_layers, n_mlp))
    for threshold in (0.0, 1.5):
      attn_len = attn_bucket(context + rounds * (gamma + 1) + gamma + 1, capacity)
      args = (lambda g=gamma, t=threshold: (
          params, m.fresh_state(rounds * (g + 1) + 1), speculative.SpecCounters.zeros(),
          jnp.asarray(rounds, jnp.int32), jnp.asarray(t, jnp.float32)))
      fn = compiled.get(speculative.SpecSegmentStatics(cfg, skip, gamma, attn_len), args())
      programs[f"spec {n_attn}+{n_mlp} g{gamma} thr{threshold}"] = (fn, args, rounds)
  gamma1 = SkipMask.from_layers(cfg.n_layers, attn=spread(cfg.n_layers, sets[-1][0]),
                                mlp=spread(cfg.n_layers, sets[-1][1]))
  attn_len = attn_bucket(context + rounds * 2 + 2, capacity)
  args1 = lambda: (params, m.fresh_state(rounds * 2 + 1), speculative.SpecCounters.zeros(),
                   jnp.asarray(rounds, jnp.int32), jnp.asarray(0.0, jnp.float32))
  programs[f"spec {sets[-1][0]}+{sets[-1][1]} g1 thr0.0"] = (
      compiled.get(speculative.SpecSegmentStatics(cfg, gamma1, 1, attn_len), args1()), args1,
      rounds)
  n_ref = 16
  search_len = attn_bucket(context, capacity)
  search_static = dict(attn_len=search_len, chunk=knapsack.default_chunk(cfg.n_layers))
  knapsack.compile_search(params, cfg, compiled, n_ref, **search_static)
  search_args = lambda: (m.fresh_cache().rollback(context - n_ref),)
  programs["search (not primed)"] = (
      lambda cache: knapsack.search(params, cfg, cache, jnp.ones((n_ref,), jnp.int32),
                                    context - n_ref, 1, 1, compiled, **search_static),
      search_args, 1)
  print(f"compiled {len(compiled)} programs in {compiled.stats.compile_s:.1f} s", flush=True)
  prime_s = {}
  for label, (fn, make_args, per) in programs.items():
    if _PRIME.value == "none" or label.startswith("search"):
      continue
    args = make_args()
    if _PRIME.value == "zeros":  # every argument but the weights zero-filled
      args = (args[0],) + jax.tree.map(jnp.zeros_like, args[1:])
    else:  # one round (speculation) or one token (AR)
      args = args[:1] + (args[1].replace(max_new=jnp.asarray(1, jnp.int32)),) + args[2:]
      if len(args) > 3:
        args = args[:3] + (jnp.asarray(1, jnp.int32),) + args[4:]
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    prime_s[label] = time.perf_counter() - start
  if prime_s:
    print(f"primed ({_PRIME.value}): " + ", ".join(f"{k} {v * 1e3:.1f} ms"
                                                    for k, v in prime_s.items()), flush=True)
  records = []
  for label, (fn, make_args, per) in programs.items():
    calls = [timed(fn, make_args) for _ in range(4)]
    prime = "none" if label.startswith("search") else _PRIME.value
    records.append(dict(program=label, prime=prime, calls_ms=calls,
                        per_unit_ms=[c / per for c in calls]))
    print(f"{label:28s} calls 1-4: " + "  ".join(f"{c:8.2f}" for c in calls) +
          f" ms  (per round/token {calls[0] / per:.3f} -> {calls[-1] / per:.3f})", flush=True)
  fn, make_args, per = programs["ar"]
  again = [timed(fn, make_args) for _ in range(4)]
  records.append(dict(program="ar after all", calls_ms=again))
  print(f"{'ar after all others':28s} calls: " + "  ".join(f"{c:8.2f}" for c in again) + " ms",
        flush=True)
  out = write_records(records, _OUTPUT.value, "first_call.json")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
