"""Is AR's one-token step faster as a two-row forward? (issue 14: "one-token step <= the 4-token
verify at every context").

  python experiments/gpu/step_width.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/step_width.py --smoke    # CPU: tiny shapes, checks the script runs
  python experiments/gpu/step_width.py --gguf=$QWEN_GGUF --attn_lens=256,2048,16384
                                                  # H200: the real weights (after ship_qwen.sh)

Session 24's H200 profile of Qwen2.5-Coder-1.5B (BENCHMARKS.md 10.28) times the one-token step
at 1.583 / 1.610 ms at 256 / 2048 positions, over a 4-token verify (1.555 / 1.598) and a 2-token
one (1.546 / 1.570). The step pads each one-row projection to two rows (ModelConfig.matmul_rows)
and runs the one-query attention kernel; a verify window is a true multi-row forward through the
window kernel. AR at width W (decoding.ar_segment's `width`: the token in row 0, padding after it,
the cursor advanced by one) runs the step as a W-row forward. This times AR's segment program at
widths 1, 2 and 4 per attention bucket, each cost the slope over two loop lengths
(latency.loop_cost), and checks that every width decodes the same tokens as width 1 on these
random weights (bfloat16 may round differently; the count of equal tokens is printed). Beside
them, the profiler's verify program (latency.VerifyLoopStatics) at windows 1, 2 and 4, timed the
same way: the profile's step and verify samples, on random weights. --tall_tile_stages=2,3,4
times the verify windows again with each pipelining depth of the kernel's tall tiles (issue 14's
verify of 11 at 16K; the steps' one-query tiles keep decode_attention.STAGES).

Session 25's first H200 run had windows through XLA attention (shapes.random_model did not ask
for the window kernel then): widths 2 and 4 cost 7-28% more than width 1 there
(results/h200/step_width/qwen_session25_xla_windows.json). With the kernel, width 2 cost
0.7-3.5% less than width 1 on Qwen's real weights at 256-28K and 6-8% less on SmolLM2's (session
26, BENCHMARKS.md 10.30), and became the GPU default (ModelConfig.step_rows = 2). The widths
here are explicit (each ARSegmentStatics names its width), so width 1 is still the one-row step
whatever the default.
-> $OUT/step_width.json
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shapes import loaded_model, random_model, write_records  # noqa: E402
from knapspec_jax import decoding, latency  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_GGUF = flags.DEFINE_string("gguf", None, "A real checkpoint instead of --model's random "
                            "weights (shapes.loaded_model; bfloat16, or float32 with --smoke).")
_LENS = flags.DEFINE_list("attn_lens", ["256", "2048", "8192", "16384"], "Attention buckets.")
_WIDTHS = flags.DEFINE_list("widths", ["1", "2", "4"], "Rows per AR step.")
_VERIFY = flags.DEFINE_list("verify", ["1", "2", "4"], "Verify windows timed beside them with "
                            "the profiler's program (latency.VerifyLoopStatics); none: \"\".")
_TALL_STAGES = flags.DEFINE_list("tall_tile_stages", [], "Verify windows also timed with these "
                                  "kernel pipelining depths for tiles taller than one query's "
                                  "(ModelConfig.tall_tile_stages; the steps keep the model's).")
_STEPS = flags.DEFINE_integer("steps", 64, "Steps of the shorter timed loop (the longer runs "
                              "latency.LOOP_RATIO times as many).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Calls per loop length (median).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/step_width.json).")


def main(argv):
  del argv
  smoke = _SMOKE.value
  lens = [256] if smoke else [int(a) for a in _LENS.value]
  steps, repeats = (4, 2) if smoke else (_STEPS.value, _REPEATS.value)
  long = latency.LOOP_RATIO * steps
  widths = [int(w) for w in _WIDTHS.value]
  verify_windows = [int(w) for w in _VERIFY.value]
  if _GGUF.value:
    m = loaded_model(_GGUF.value, max(lens), "float32" if smoke else "bfloat16")
  else:
    m = random_model(_MODEL.value, max(lens), smoke)
  cfg, params = m.cfg, m.params
  tall_stages = [int(a) for a in _TALL_STAGES.value] or [cfg.tall_tile_stages]
  lens = [min(a, m.context) for a in lens]
  print(f"{latency.device_name()} | jax {jax.__version__} | {m.name} | buckets {lens} | widths "
        f"{widths} | {steps} and {long} steps per call, median of {repeats}", flush=True)
  compiled = CompileCache()
  records = []
  for attn_len in lens:
    reference = None
    for width in widths:
      def make_args(n, width=width):
        # the loop ends at the bucket's last position a width-W step may write
        return params, m.state_at(attn_len - width + 1 - n, n + 1)
      fn = compiled.get(decoding.ARSegmentStatics(cfg, attn_len, width=width), make_args(steps))
      out = fn(*make_args(long))  # a first call, untimed; its tokens for the comparison
      tokens = np.asarray(jax.device_get(out.out[:long]))
      reference = tokens if reference is None else reference
      per_step, per_call = latency.loop_cost(fn, make_args, steps, long, repeats)
      row = dict(attn_len=attn_len, width=width, ms_per_step=per_step * 1e3,
                 ms_per_call=per_call * 1e3, equal_tokens=int(np.sum(tokens == reference)),
                 tokens=int(long))
      records.append(row)
      print(f"bucket {attn_len:5d} width {width}: {row['ms_per_step']:.4f} ms per step "
            f"(+{row['ms_per_call']:.2f} ms per call); tokens equal to width "
            f"{widths[0]}'s: {row['equal_tokens']}/{long}", flush=True)
    # the profiler's verify program (latency.measure's loops), per kernel depth for tall tiles
    for stages, window in itertools.product(tall_stages, verify_windows):
      at = m.base.rollback(attn_len - max(long, window) - 1)  # each call copies it
      tokens = jnp.ones((1, window), jnp.int32)
      def make_args(n, at=at, tokens=tokens):
        return params, jax.tree.map(jnp.copy, at), tokens, jnp.asarray(n, jnp.int32)
      statics = latency.VerifyLoopStatics(
          dataclasses.replace(cfg, tall_tile_stages=stages), attn_len)
      fn = compiled.get(statics, make_args(steps))
      per_step, per_call = latency.loop_cost(fn, make_args, steps, long, repeats)
      row = dict(attn_len=attn_len, verify_window=window, ms_per_step=per_step * 1e3,
                 ms_per_call=per_call * 1e3, tall_tile_stages=stages)
      records.append(row)
      print(f"bucket {attn_len:5d} verify T={window:2d} (tall tiles' stages {stages}): "
            f"{row['ms_per_step']:.4f} ms per forward (+{row['ms_per_call']:.2f} ms per call)",
            flush=True)
  print("written", write_records(records, _OUTPUT.value, "step_width.json"))


if __name__ == "__main__":
  app.run(main)
