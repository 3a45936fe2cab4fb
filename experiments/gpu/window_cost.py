"""What a decoding window costs beyond its steps: the fixed cost that made KnapSpec's 8-round
trial windows on the H200 measure 0.72-0.84x AR while their rounds, on the profile's costs, ran
at 1.02-1.18x (BENCHMARKS.md 10.16: 21 tokens in 44 ms where the profile timed the rounds at 32).

  python experiments/gpu/window_cost.py --model=$QWEN_GGUF \
      --profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_pallas_windows__bfloat16.json

On one long-document prompt, from a fresh prefill per repeat, times drafting windows of R rounds
(speculative.run_rounds with a fixed skip set, as controller.run calls it) and plain windows of T
tokens (decoding.run_ar), each under three conditions:
  back_to_back   right after a window of the same kind (4 rounds, or 32 plain tokens)
  after_ar       right after a plain window of 32 tokens (a drafting window's usual neighbour)
  after_gap      as back_to_back, then 20 ms of host idleness (the GPU may lower its clocks)
and prints, per condition and length, the median measured time, the profile's time of what the
window did (its draft forwards and verifies, or its steps) and the excess; then a least-squares
line of the excess against the window's steps: its intercept is the fixed cost per window.
Writes every window to --output (default $OUT/window_cost.json when OUT is set). Whether the
fixed cost is XLA's command buffers (CUDA graphs) being updated for each call's buffers: the
same run with `XLA_FLAGS=--xla_gpu_enable_command_buffer=` (none), or through
`experiments/gpu/with_xla_flag_sets.sh window_cost.py window_cost 300 --profile=...` (defaults,
and command buffers taking in while loops and conditionals).
"""

import json
import os
import pathlib
import random
import statistics
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import api, datasets, decoding, methods, metrics  # noqa: E402
from knapspec_jax import selection, speculative  # noqa: E402
from knapspec_jax.engine import abstract_state  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402

# KnapSpec's draft at the 2K document on the H200 (BENCHMARKS.md 10.16): attention of layers 4, 5
# and 8-13, MLP of layers 8-15 (2 * layer + 0 attention, + 1 MLP).
_KNAPSPEC_2K = "8,10,16,17,18,19,20,21,22,23,24,25,26,27,29,31"

_MODEL = flags.DEFINE_string("model", os.environ.get("QWEN_GGUF", ""), "GGUF or checkpoint "
                             "(default $QWEN_GGUF, else the bundled SmolLM2).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Params and KV dtype.")
_PROFILE = flags.DEFINE_string("profile", None, "Latency profile JSON (default: the model's).")
_N = flags.DEFINE_integer("n_tokens", 2000, "Prompt length (long-document prompt).")
_SKIP = flags.DEFINE_string("skip", _KNAPSPEC_2K, "Skipped sublayers, as indices into the "
                            "interleaved (attention, MLP) list of SkipMask; must fit the model.")
_GAMMA = flags.DEFINE_integer("gamma", 2, "Draft length.")
_ROUNDS = flags.DEFINE_list("rounds", ["2", "4", "8", "16", "64"], "Drafting window lengths.")
_TOKENS = flags.DEFINE_list("ar_tokens", ["4", "8", "16", "64"], "Plain window lengths.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Fresh prefills, each running every window.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON of every window (default: "
                              "$OUT/window_cost.json when OUT is set).")
_GAP_S = 0.02
_CONDITIONS = ("back_to_back", "after_ar", "after_gap")


def main(argv):
  del argv
  m = ks.load_model(_MODEL.value or None, dtype=_DTYPE.value)
  profile = (ks.LatencyProfile.load(_PROFILE.value) if _PROFILE.value
             else methods.profile_for(m))  # measured on first use where none is stored
  n_sub = 2 * m.cfg.n_layers
  bits = [0] * n_sub
  for i in map(int, _SKIP.value.split(",")):
    if not 0 <= i < n_sub:
      raise app.UsageError(f"--skip index {i} is outside 0..{n_sub - 1} ({m.name})")
    bits[i] = 1
  skip, gamma = ks.SkipMask.from_list(bits), _GAMMA.value
  ids = datasets.encode(m.tokenizer, datasets.long_document_prompt(m.tokenizer, _N.value))
  rounds, tokens = [int(r) for r in _ROUNDS.value], [int(t) for t in _TOKENS.value]
  print(f"{m.name} {m.dtype} on {jax.devices()[0].device_kind}; {len(ids)} prompt tokens; "
        f"draft {skip}, gamma {gamma}; profile {profile.device}", flush=True)

  def fresh():
    cache = KVCache.create(m.cfg, api.DTYPES[m.dtype])
    logits, cache = decoding.prefill(m.params, m.cfg, ids, cache, m.compiled)
    return jax.block_until_ready(decoding.init_state(cache, logits, 1 << 20, ()))

  counters = speculative.SpecCounters.zeros()
  # What each kind of window decodes with, for metrics.predicted_window_s: the profile's time of
  # the window as it ran, as controller.run records it (predicted_s) and a trial is judged by.
  nan = float("nan")
  draft_decision = selection.Decision(skip, gamma, nan, nan, nan, nan, len(ids), "window_cost")
  plain_decision = selection.Decision(None, 0, nan, nan, nan, nan, len(ids), "window_cost")

  def drafting(state, counters, r):
    before = jax.device_get((counters, state.n_out, state.cache.length))
    start = time.perf_counter()
    state, counters, _ = speculative.run_rounds(
        m.params, m.cfg, state, counters, m.compiled, skip=skip, gamma=gamma, threshold=0.7,
        max_rounds=r)
    jax.block_until_ready((state, counters))
    seconds = time.perf_counter() - start
    (c0, n0, length), (c1, n1) = before, jax.device_get((counters, state.n_out))
    n_rounds, forwards = int(c1.rounds - c0.rounds), int(c1.draft_forwards - c0.draft_forwards)
    attn_len = decoding.attn_bucket(int(length) + gamma + 1, state.cache.capacity)
    predicted = metrics.predicted_window_s(profile, draft_decision, attn_len, int(n1 - n0),
                                           n_rounds, forwards)
    return state, counters, dict(kind="draft", length=r, rounds=n_rounds, forwards=forwards,
                                 tokens=int(n1 - n0), steps=forwards + n_rounds,
                                 seconds=seconds, predicted_s=predicted)

  def plain(state, t):
    n0, length = (int(x) for x in jax.device_get((state.n_out, state.cache.length)))
    start = time.perf_counter()
    state = jax.block_until_ready(decoding.run_ar(m.params, m.cfg, state, m.compiled,
                                                  max_tokens=t))
    seconds = time.perf_counter() - start
    done = int(jax.device_get(state.n_out)) - n0
    predicted = metrics.predicted_window_s(
        profile, plain_decision, decoding.attn_bucket(length + 1, state.cache.capacity), done,
        0, 0)
    return state, dict(kind="ar", length=t, tokens=done, steps=done, seconds=seconds,
                       predicted_s=predicted)

  # Warm-up: every program the timed windows can reach compiles here (and runs once).
  per_repeat = len(_CONDITIONS) * (sum((gamma + 1) * (4 + r) for r in rounds)
                                   + sum(32 + t for t in tokens))
  end = len(ids) + per_repeat + 64
  speculative.compile_segments(m.params, m.cfg, abstract_state(m), m.compiled, skip=skip,
                               gamma=gamma, start=len(ids), end=end)
  methods.ar_warmup(m, len(ids), end - len(ids))
  state = fresh()
  for r in rounds:
    state, counters, _ = drafting(state, counters, r)
  for t in tokens + [32]:
    state, _ = plain(state, t)

  compiles = m.compiled.stats.compiles
  rows = []
  rng = random.Random(0)
  for rep in range(_REPEATS.value):
    state = fresh()
    plan = [(kind, n, cond) for cond in _CONDITIONS
            for kind, lengths in (("draft", rounds), ("ar", tokens)) for n in lengths]
    rng.shuffle(plan)
    for kind, n, cond in plan:
      # The window before: a plain one (after_ar), else one of the same kind; after_gap then
      # idles the host.
      if cond == "after_ar" or kind == "ar":
        state, _ = plain(state, 32)
      else:
        state, counters, _ = drafting(state, counters, 4)
      if cond == "after_gap":
        time.sleep(_GAP_S)
      if kind == "draft":
        state, counters, row = drafting(state, counters, n)
      else:
        state, row = plain(state, n)
      rows.append(dict(row, condition=cond, repeat=rep))
    print(f"repeat {rep}: {len(plan)} windows, context now "
          f"{int(jax.device_get(state.cache.length))}", flush=True)

  if m.compiled.stats.compiles != compiles:
    print(f"WARNING: {m.compiled.stats.compiles - compiles} programs compiled in timed windows")
  print("\n| kind | condition | length | n | tokens | measured ms | profile ms | excess ms |")
  print("|---|---|---|---|---|---|---|---|")
  for kind, lengths in (("draft", rounds), ("ar", tokens)):
    for cond in _CONDITIONS:
      for n in lengths:
        sel = [r for r in rows if (r["kind"], r["condition"], r["length"]) == (kind, cond, n)]
        med = lambda key: statistics.median(r[key] for r in sel)
        excess = statistics.median(r["seconds"] - r["predicted_s"] for r in sel)
        print(f"| {kind} | {cond} | {n} | {len(sel)} | {med('tokens'):.0f} | "
              f"{med('seconds') * 1e3:.2f} | {med('predicted_s') * 1e3:.2f} | "
              f"{excess * 1e3:.2f} |")
  print("\nexcess = a + b * steps (least squares over every window):")
  for kind in ("draft", "ar"):
    for cond in _CONDITIONS:
      sel = [r for r in rows if (r["kind"], r["condition"]) == (kind, cond)]
      x = np.array([r["steps"] for r in sel], float)
      y = np.array([r["seconds"] - r["predicted_s"] for r in sel])
      if len(set(x)) < 2:
        print(f"  {kind:5s} {cond:12s}: one window length only, no line")
        continue
      b, a = np.polyfit(x, y, 1)
      print(f"  {kind:5s} {cond:12s}: fixed {a * 1e3:6.2f} ms per window, "
            f"{b * 1e6:7.1f} us per step beyond the profile ({len(sel)} windows)")
  output = _OUTPUT.value or (os.environ.get("OUT") and f"{os.environ['OUT']}/window_cost.json")
  if output:
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(model=m.name, dtype=m.dtype, skip=skip.to_list(),
                                    gamma=gamma, prompt_tokens=len(ids), rows=rows)) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
