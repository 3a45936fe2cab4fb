"""Measures and saves the latency profile of the default model on this device.

  python experiments/measure_profile.py --dtype=bfloat16 --output=profile.json
  python experiments/measure_profile.py --dtype=bfloat16 --attention=pallas   # GPU
  python experiments/measure_profile.py --dtype=float32 --quick                 # what a CPU's
                                                          # first use measures (QUICK_MEASURE)
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import api, latency, metrics  # noqa: E402

_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "float32 or bfloat16")
_ATTENTION = flags.DEFINE_string("attention", None, "One-query attention kernel (load_model's "
                                 "default when unset).")
_OUT = flags.DEFINE_string("output", None, "A .json file or a directory to save into (default: "
                            "profiles/ in the repo).")
_LENS = flags.DEFINE_list("attn_lens", ["256", "1024", "2048", "4096", "8192"], "Buckets.")
_DRAFT_VOCAB = flags.DEFINE_integer("draft_vocab", 0, "load_model's draft_vocab: drafts score "
                                    "this many tokens (0: all); the profile then times the "
                                    "draft's head too (draft_head_s).")
_QUICK = flags.DEFINE_bool("quick", False, "latency.QUICK_MEASURE's lengths, windows and steps "
                           "(what load_model's first speculative use measures on a CPU) instead "
                           "of --attn_lens and --steps.")
_STEPS = flags.DEFINE_integer("steps", 32, "Decode steps of the shorter timed loop (the longer "
                              "runs latency.LOOP_RATIO times as many; each cost is the slope).")


def main(argv):
  del argv
  m = ks.load_model(dtype=_DTYPE.value, attention=_ATTENTION.value,
                    draft_vocab=_DRAFT_VOCAB.value)
  settings = (latency.QUICK_MEASURE if _QUICK.value else
              dict(attn_lens=tuple(map(int, _LENS.value)), windows=(1, 2, 4, 8, 11),
                   steps=_STEPS.value, repeats=3))
  start = time.perf_counter()
  p = latency.measure(m.params, m.cfg, api.DTYPES[_DTYPE.value], m.profile_name,
                      compiled=m.compiled, **settings)
  print(f"measured in {time.perf_counter() - start:.1f} s ({settings})")
  print("saved", p.save(_OUT.value), p.errors(), "segment compile", p.segment_compile_s,
        "draft head saving", p.draft_head_s)
  for n_attn, n_mlp, attn_len, seconds in p.step_samples:
    if n_attn == n_mlp == m.cfg.n_layers:  # the full model: what a step reads at this context
      attn_len = int(attn_len)  # the samples are a float array
      bw = metrics.bandwidth(metrics.step_bytes(m.params, m.cfg, attn_len - 1,
                                                api.DTYPES[_DTYPE.value]), seconds, p.read_gbps)
      print(f"full step at {attn_len:5d}: {seconds * 1e3:.3f} ms/token {1 / seconds:.1f} "
            f"tok/s {metrics.format_bandwidth(bw)}")


if __name__ == "__main__":
  app.run(main)
