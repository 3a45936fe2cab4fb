"""Where a decode window's fixed cost goes: one call of the speculation segment program, timed
against the rounds it runs, beside a program that does nothing with the same arguments.

  python experiments/gpu/call_cost.py --context=16000            # Qwen2.5-1.5B shape, random bf16
  python experiments/gpu/call_cost.py --gguf=$QWEN_GGUF --draft_vocab=16384 --context=16000
  python experiments/gpu/call_cost.py --smoke                    # CPU: tiny shapes

On the H100 one more window cost a 1024-token Qwen2.5-Coder-1.5B generation at 16K 8 ms
(`kept_draft_windows.py`, BENCHMARKS.md 10.37): 1.1 ms of host between windows, the rest inside
the window's program call, beyond its rounds; the latency profile's `call_s` (a loop's cost
beyond its steps) is 2.2 ms there, 1.4 ms on the H200. Here each call decodes `R` rounds (R in
--rounds, 0: the loop runs no iteration) from a fresh state, in three forms interleaved per
repeat:
  host scalars    the round budget and threshold as NumPy scalars (the engine since session 33)
  device scalars  the same made device arrays first (jnp.asarray), as the engine did before
  empty program   a program of the same arguments (weights, donated state, counters, the two
                  scalars) that returns its state unchanged: what the call itself costs
and after each call the one device read the host loop makes (done, cursor, round counter).
Per form a least-squares line of ms against R: its intercept is the call's fixed cost, its slope
a round. -> $OUT/call_cost.json
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shapes import loaded_model, random_model, spread, write_records  # noqa: E402
from knapspec_jax import latency, speculative  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_GGUF = flags.DEFINE_string("gguf", None, "A real checkpoint instead of --model's random "
                            "weights (shapes.loaded_model, bfloat16).")
_DRAFT_VOCAB = flags.DEFINE_integer("draft_vocab", 0, "With --gguf: drafts score this many "
                                    "tokens.")
_CONTEXT = flags.DEFINE_integer("context", 16000, "Cache cursor at each call's start.")
_ATTN = flags.DEFINE_integer("attn", 10, "Attention sublayers the draft skips.")
_MLP = flags.DEFINE_integer("mlp", 8, "MLP sublayers the draft skips.")
_GAMMA = flags.DEFINE_integer("gamma", 4, "Draft length.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "Confidence exit.")
_ROUNDS = flags.DEFINE_list("rounds", ["0", "1", "2", "4", "8", "16"], "Rounds per call.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Calls per form and round count (median).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/call_cost.json).")

FORMS = ("host scalars", "device scalars", "empty program")


def main(argv):
  del argv
  smoke = _SMOKE.value
  rounds = [0, 1, 2] if smoke else [int(r) for r in _ROUNDS.value]
  repeats = 2 if smoke else _REPEATS.value
  gamma = 2 if smoke else _GAMMA.value
  span = max(rounds) * (gamma + 1) + gamma + 1
  if _GGUF.value and not smoke:
    m = loaded_model(_GGUF.value, _CONTEXT.value + span, "bfloat16", _DRAFT_VOCAB.value)
  else:
    m = random_model(_MODEL.value, _CONTEXT.value + span, smoke)
  cfg, params = m.cfg, m.params
  context = m.context - span
  skip = SkipMask.from_layers(cfg.n_layers, attn=spread(cfg.n_layers, 1 if smoke else _ATTN.value),
                              mlp=spread(cfg.n_layers, 1 if smoke else _MLP.value))
  attn_len = attn_bucket(context + span, m.capacity)
  print(f"{latency.device_name()} | jax {jax.__version__} | {m.name} | context {context} | "
        f"bucket {attn_len} | skip {len(skip.attn_skipped)} attn + {len(skip.mlp_skipped)} MLP, "
        f"gamma {gamma}, threshold {_THRESHOLD.value} | {repeats} repeats", flush=True)

  def fresh():
    state = m.state_at(context, 10**6)
    counters = speculative.SpecCounters.zeros()
    jax.block_until_ready((state, counters))
    return state, counters

  state, counters = fresh()
  example = (params, state, counters, np.int32(1), np.float32(_THRESHOLD.value))
  segment = CompileCache().get(speculative.segment_program(cfg, skip, gamma, attn_len), example)
  empty = jax.jit(lambda p, s, c, r, t: (s, c), donate_argnums=(1,)).lower(*example).compile()
  programs = {"host scalars": segment, "device scalars": segment, "empty program": empty}

  def call(form: str, r: int) -> tuple[float, float, int]:
    """One call's wall time and the device read after it (ms), from a fresh state, and the
    rounds the call ran (its counter)."""
    state, counters = fresh()
    start = time.perf_counter()
    if form == "device scalars":
      budget = (jnp.asarray(r, jnp.int32), jnp.asarray(_THRESHOLD.value, jnp.float32))
    else:
      budget = (np.int32(r), np.float32(_THRESHOLD.value))
    state, counters = programs[form](params, state, counters, *budget)
    jax.block_until_ready((state, counters))
    called = time.perf_counter()
    _, _, ran = jax.device_get((state.done, state.cache.length, counters.rounds))
    return (called - start) * 1e3, (time.perf_counter() - called) * 1e3, int(ran)

  for form in FORMS:  # warm-up: every form and round count once
    for r in rounds:
      call(form, r)
  samples = {(form, r): [] for form in FORMS for r in rounds}
  for i in range(repeats):
    for r in rounds:
      for form in (FORMS if i % 2 == 0 else FORMS[::-1]):
        samples[form, r].append(call(form, r))
  med = {key: statistics.median(s[0] for s in calls) for key, calls in samples.items()}
  records = []
  print("\n| rounds | " + " | ".join(f"{form} (ms)" for form in FORMS)
        + " | device read after (ms) |")
  print("|---|" + "---|" * (len(FORMS) + 1))
  for r in rounds:
    read = statistics.median(s[1] for form in FORMS for s in samples[form, r])
    print(f"| {r} | " + " | ".join(f"{med[form, r]:.3f}" for form in FORMS) + f" | {read:.3f} |")
    records += [dict(form=form, rounds=r, call_ms=[s[0] for s in samples[form, r]],
                     read_ms=[s[1] for s in samples[form, r]], median_ms=med[form, r],
                     rounds_run=sorted({s[2] for s in samples[form, r]}))
                for form in FORMS]
  fits = {}
  for form in FORMS:
    slope, intercept = np.polyfit(rounds, [med[form, r] for r in rounds], 1)  # least squares
    fits[form] = float(intercept), float(slope)
    print(f"{form:15s}: {fits[form][0]:.3f} ms a call + {fits[form][1]:.3f} ms a round")
  print(f"of the call's fixed cost ({fits['host scalars'][0]:.3f} ms), the call of a program "
        f"that does nothing: {fits['empty program'][0]:.3f} ms; the budget as device arrays adds "
        f"{fits['device scalars'][0] - fits['host scalars'][0]:+.3f} ms")
  out = write_records(dict(device=latency.device_name(), model=m.name, context=context,
                           attn_len=attn_len, skip=skip.to_list(), gamma=gamma,
                           threshold=_THRESHOLD.value, rounds=rounds, repeats=repeats,
                           fits={form: dict(call_ms=a, round_ms=b)
                                 for form, (a, b) in fits.items()},
                           records=records), _OUTPUT.value, "call_cost.json")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
