"""Why the latency profile's full-model step is 10-13% slower than AR decodes (issue 13).

  python experiments/gpu/profile_gap.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/profile_gap.py --smoke    # CPU: tiny shapes, checks the script runs

BENCHMARKS.md 10.26: the committed H200 Qwen profile times a full step at 2048 positions at
1.769 ms where AR decodes at 1.59 ms per token (SmolLM2: 1.136 against 1.00-1.04), so every
window the profile predicts is about 12% slower than measured. The profile times AR's own segment
program (latency.measure: `steps` steps per call, a fresh cache copy per call, median of 3);
AR runs the same program for up to 1024 steps per call. This times that program, per attention
bucket, as the profiler does at several loop lengths (a fixed cost per call shows as a per-step
cost falling with the length), called back to back (no idle device between calls), after an
idle pause (clocks), and through decoding.run_ar; then again after a search has run in the
process, as latency.measure runs one per bucket. -> $OUT/profile_gap.json
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
import numpy as np  # noqa: E402

from shapes import random_model, write_records  # noqa: E402
from knapspec_jax import decoding, knapsack, latency  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_LENS = flags.DEFINE_list("attn_lens", ["2048", "16384"], "Attention buckets.")
_STEPS = flags.DEFINE_list("steps", ["8", "16", "32", "64", "256", "1000"], "Steps per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Calls per measurement (median).")
_IDLE = flags.DEFINE_float("idle_s", 0.2, "Pause before each call of the idle measurement.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/profile_gap.json).")


def main(argv):
  del argv
  smoke = _SMOKE.value
  lens = [256] if smoke else [int(a) for a in _LENS.value]
  steps_list = [4, 16] if smoke else [int(s) for s in _STEPS.value]
  repeats = _REPEATS.value
  m = random_model(_MODEL.value, max(lens), smoke)
  cfg, params = m.cfg, m.params
  lens = [min(a, m.context) for a in lens]
  print(f"{latency.device_name()} | jax {jax.__version__} | {m.name} | buckets {lens} | "
        f"steps per call {steps_list} | median of {repeats}", flush=True)
  compiled = CompileCache()
  records = []

  def measure(attn_len: int, steps: int, phase: str) -> dict:
    start = attn_len - steps - 1  # positions up to attn_len - 1, as latency.measure runs them
    make_args = lambda: (params, m.state_at(start, steps + 1))
    fn = compiled.get(decoding.ARSegmentStatics(cfg, attn_len), make_args())
    jax.block_until_ready(fn(*make_args()))  # a first call, untimed
    row = {"phase": phase, "attn_len": attn_len, "steps": steps}
    # as latency.measure times it: fresh arguments made and ready, then the call, waited for
    row["profiler_ms"] = latency.median_seconds(fn, make_args, repeats) / steps * 1e3
    # back to back: every call's arguments made first, the calls dispatched with no wait between
    args = [make_args() for _ in range(repeats)]
    jax.block_until_ready(args)
    begin = time.perf_counter()
    jax.block_until_ready([fn(*a) for a in args])
    row["back_to_back_ms"] = (time.perf_counter() - begin) / (repeats * steps) * 1e3
    del args

    def after_idle():
      a = make_args()
      jax.block_until_ready(a)
      time.sleep(_IDLE.value)
      return a
    row["after_idle_ms"] = latency.median_seconds(fn, after_idle, repeats) / steps * 1e3
    # the host loop AR decodes with (one device read per segment, then the call)
    times = []
    for _ in range(repeats):
      state = m.state_at(start, steps + 1)
      jax.block_until_ready(state)
      begin = time.perf_counter()
      jax.block_until_ready(decoding.run_ar(params, cfg, state, compiled))
      times.append(time.perf_counter() - begin)
    row["run_ar_ms"] = float(np.median(times)) / steps * 1e3
    print(f"{phase:13s} bucket {attn_len:5d} {steps:4d} steps/call: profiler "
          f"{row['profiler_ms']:.4f}  back-to-back {row['back_to_back_ms']:.4f}  after "
          f"{_IDLE.value:g} s idle {row['after_idle_ms']:.4f}  run_ar {row['run_ar_ms']:.4f} "
          f"ms/step", flush=True)
    records.append(row)
    return row

  for attn_len in lens:
    rows = [measure(attn_len, steps, "fresh process") for steps in steps_list
            if steps + 2 <= attn_len]
    # per-call time = fixed + steps * per_step: the fit over the loop lengths
    n = np.array([r["steps"] for r in rows], float)
    total = np.array([r["profiler_ms"] * r["steps"] for r in rows])
    per_step, fixed = np.polyfit(n, total, 1)
    print(f"  fit bucket {attn_len}: {fixed:.3f} ms per call + {per_step:.4f} ms per step",
          flush=True)
    records.append({"phase": "fit", "attn_len": attn_len, "fixed_ms": float(fixed),
                    "per_step_ms": float(per_step)})
  # latency.measure runs a search in each bucket before timing the next one
  n_ref = 16
  p0 = lens[0] - n_ref
  search = lambda: knapsack.search(params, cfg, m.fresh_cache().rollback(p0),
                                   jnp.ones((n_ref,), jnp.int32), p0, 1, 1, compiled,
                                   attn_len=lens[0], chunk=knapsack.default_chunk(cfg.n_layers))
  jax.block_until_ready(search())
  jax.block_until_ready(search())
  print("a search ran", flush=True)
  for attn_len in lens:
    for steps in steps_list[:3]:
      if steps + 2 <= attn_len:
        measure(attn_len, steps, "after search")
  print("written", write_records(records, _OUTPUT.value, "profile_gap.json"))


if __name__ == "__main__":
  app.run(main)
