"""What a new skip set costs, static masks against run-time gating (issue 13 item 5).

  python experiments/gpu/switch_cost.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/switch_cost.py --smoke    # CPU: tiny shapes, checks the script runs

ModelConfig.draft_skip picks how a draft leaves out sublayers: "static" compiles one program per
skip set (4-4.7 s on the H200 for Qwen2.5-1.5B), "runtime" compiles one program that reads the
skip set from the decode state and runs each sublayer under a lax.cond. For each skip set (attn:mlp
counts of skipped inner sublayers) and both modes this times, at one context, on device:
  draft     the draft decoding alone (decoding.ar_segment) -> ms per step;
  segment   spec_segment, threshold 0 (every round drafts gamma tokens) -> ms per round;
  switch    seconds from asking for the set to running it at steady speed: getting its
            segment program (static: a compile; runtime: a compile for the first set only, then
            nothing) plus its first call (decoding.with_skip for runtime) minus a later call;
with the kernels per loop body (metrics.loop_kernels). Run it once per XLA flag set
(run_switch_cost.sh): a GPU conditional waits for its predicate on the host unless command
buffers (CUDA graphs) take the conditionals in. Records: $OUT/switch_cost.json (or --output).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shapes import random_model, spread, write_records  # noqa: E402
from knapspec_jax import decoding, latency, metrics, speculative  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and loops (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_CONTEXT = flags.DEFINE_integer("context", 2000, "Cache cursor at the start.")
_GAMMA = flags.DEFINE_integer("gamma", 3, "Draft length of the segment.")
_SETS = flags.DEFINE_list("sets", ["0:0", "8:4", "16:12"], "Skip sets as attn:mlp counts of "
                          "skipped inner sublayers (spread evenly); 0:0 times the gating's cost "
                          "with nothing skipped.")
_ROUNDS = flags.DEFINE_integer("rounds", 64, "Rounds (and steps) per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/switch_cost.json).")


def timed_get(compiled: CompileCache, statics, args):
  """(program, seconds CompileCache.get took: its compile and priming, 0 when cached)."""
  start = time.perf_counter()
  fn = compiled.get(statics, args)
  return fn, time.perf_counter() - start


def main(argv):
  del argv
  smoke = _SMOKE.value
  rounds, repeats = (4, 2) if smoke else (_ROUNDS.value, _REPEATS.value)
  gamma = _GAMMA.value
  m = random_model(_MODEL.value, _CONTEXT.value, smoke)
  context, capacity = m.context, m.capacity
  read_gbps = latency.read_bandwidth(64 << 20 if smoke else None)
  device = latency.device_name()
  flags_env = os.environ.get("XLA_FLAGS", "")
  print(f"{device} | jax {jax.__version__} | {m.name} | context {context} | gamma {gamma} | "
        f"XLA_FLAGS='{flags_env}' | {rounds} rounds x {repeats} loops", flush=True)
  attn_len = attn_bucket(context + rounds * (gamma + 1) + gamma + 1, capacity)
  records = []
  for mode in ("static", "runtime"):
    cfg = dataclasses.replace(m.cfg, draft_skip=mode)
    compiled = CompileCache()
    for spec in (["0:0", "1:1"] if smoke else _SETS.value):
      n_attn, n_mlp = (int(x) for x in spec.split(":"))
      skip = SkipMask.from_layers(cfg.n_layers, attn=spread(cfg.n_layers, n_attn) if n_attn
                                  else (), mlp=spread(cfg.n_layers, n_mlp) if n_mlp else ())
      gated = mode == "runtime"
      place = (lambda s: decoding.with_skip(s, skip)) if gated else (lambda s: s)
      seg_args = lambda: (m.params, place(m.fresh_state(rounds * (gamma + 1) + 1)),
                          speculative.SpecCounters.zeros(), jnp.asarray(rounds, jnp.int32),
                          jnp.asarray(0.0, jnp.float32))
      # The gated programs are timed with nothing skipped too: what the conds cost by themselves.
      seg_statics = (speculative.SpecSegmentStatics(cfg, SkipMask.none(cfg.n_layers), gamma,
                                                    attn_len, gated=True) if gated
                     else speculative.SpecSegmentStatics(cfg, skip, gamma, attn_len))
      draft_statics = (decoding.ARSegmentStatics(cfg, attn_len, gated=True) if gated
                       else decoding.ARSegmentStatics(cfg, attn_len, skip=skip))
      seg, seg_compile = timed_get(compiled, seg_statics, seg_args())
      ar_args = lambda: (m.params, place(m.fresh_state(rounds)))
      draft, _ = timed_get(compiled, draft_statics, ar_args())
      # The first call with this skip set (for the gated program: a set it has not run yet,
      # since the compile primed it with nothing skipped), then the steady calls.
      first_args = seg_args()
      jax.block_until_ready(first_args)
      start = time.perf_counter()
      jax.block_until_ready(seg(*first_args))
      first = time.perf_counter() - start
      t_seg = latency.median_seconds(seg, seg_args, repeats)
      t_draft = latency.median_seconds(draft, ar_args, repeats) / rounds
      # From asking for the set to running it at steady speed: its program's get (a compile, or
      # nothing once the gated program exists) and what its first call costs over a later one.
      switch_s = seg_compile + max(first - t_seg, 0.0)
      kernels = {k: sum(metrics.loop_kernels(f.as_text()).values())
                 for k, f in (("segment", seg), ("draft", draft))}
      record = dict(model=m.name, device=device, xla_flags=flags_env, context=context,
                    attn_len=attn_len, mode=mode, n_attn_skipped=len(skip.attn_skipped),
                    n_mlp_skipped=len(skip.mlp_skipped), gamma=gamma,
                    ms_per_round=t_seg / rounds * 1e3, ms_per_draft_step=t_draft * 1e3,
                    segment_get_s=seg_compile, first_call_s=first, steady_call_s=t_seg,
                    switch_s=switch_s, kernels_per_body=kernels, read_gbps=read_gbps)
      records.append(record)
      print(f"{mode:7s} skip {record['n_attn_skipped']:2d} attn + {record['n_mlp_skipped']:2d} "
            f"mlp: draft {t_draft * 1e3:7.3f} ms/step, round {t_seg / rounds * 1e3:7.3f} ms, "
            f"switch {switch_s:7.3f} s (get {seg_compile:6.2f} s, first call {first * 1e3:7.1f} "
            f"ms, steady {t_seg * 1e3:7.1f} ms) | kernels per body {kernels}", flush=True)
  out = write_records(records, _OUTPUT.value, "switch_cost.json")
  print(f"wrote {out} ({len(records)} records)")


if __name__ == "__main__":
  app.run(main)
