"""Qwen2.5-Coder-1.5B-Instruct on one H200 (bfloat16, the default Pallas decode attention), for
issue 13 item 4: every method on a few Spec-Bench prompts and on 2K / 8K-token summarization
documents, 256 new tokens, AR rerun as the noise floor, medians of 3 timed runs after one
untimed warm-up run per (method, prompt). Run on the device machine by
experiments/gpu/run_qwen.sh (model path: $QWEN_GGUF).

Budget (the device time of one call, about 6 minutes): the model loads in 64-106 s there
(../shared/MEASURED.md); 5 prompts x 6 runs (ar, ar-rerun, knapspec, fixed, del, clasp) x 4
(warm-up + 3 timed) = 120 generations of 256 tokens at 0.5-0.8 s; each new skip set or attention
bucket costs a ~4 s compile (the H200 profile's segment_compile_s), so CLaSp re-optimizes every
64 rounds (configs/h200.py: 32, for SmolLM2) to keep its warm-up compiles few.

KnapSpec runs with its defaults (since session 6: keep=True and a 25% explore_budget;
KnapSpecConfig's docstring gives the measurements behind each). The untimed warm-up run of each
prompt explores; a draft it keeps is compiled by the next run's warm-up, outside the timings.
Session 5's options, explore_budget=0.2 and compile_horizon=100000, are no longer needed.
"""

import os

from configs import base


def get_config():
  c = base.get_config()
  c.name = "h200_qwen"
  c.model = os.environ.get("QWEN_GGUF", "")  # "" on a machine without it: bundled SmolLM2
  c.dtype = "bfloat16"
  c.methods = "ar,knapspec,fixed,del,clasp"
  c.noise_floor = True
  # AR alone in a child process first (one more model load, 15-49 s): AR slowed ~9% after the
  # other methods' warm-ups in one process (BENCHMARKS.md 10.18), so each speedup is also given
  # over AR alone.
  c.ar_alone = True
  c.specbench_per_category = 1
  c.categories = "writing,coding,math"
  c.long_lengths = "2000,8000"
  c.max_new_tokens = 256
  c.long_max_new_tokens = 256
  c.repeats = 3
  c.warmup_runs = 1
  c.method_options = "clasp.interval=64"
  # Drafts score 16384 of the 151,936 tokens (load_model's draft_vocab; the verify scores all, so
  # the output is AR's), for every drafting method alike. Session 29 (BENCHMARKS.md 10.33): with
  # it, KnapSpec 1.151-1.155x / 1.144-1.147x / 1.285-1.292x AR at 2K / 16K / 28K over three
  # processes, against 1.111-1.133x / 1.115-1.126x / 1.227-1.228x without (10.30); Spec-Bench
  # unchanged (1.000-1.003x, declining). Its H200 profile is committed (..._draftvocab16384_...).
  c.draft_vocab = 16384
  # Output: a new results/tmp/h200_qwen-<time>/ folder; experiments/gpu/run_qwen.sh writes
  # results/h200_qwen/<time>/ and copies it to $OUT (commit the run under results/h200_qwen/).
  return c
