"""The GPU tables of BENCHMARKS.md on the NVIDIA H200 (bfloat16, the Pallas decode attention):
every method on the Spec-Bench subset (128 new tokens) and on 2K / 4K / 7K-token summarization
documents (256 new tokens), AR rerun as the noise floor, medians of 3 timed runs. Run on the
device machine by experiments/gpu/run_h200.sh.

The budgets are half and a quarter of configs/h100.py's, and CLaSp re-optimizes every 32 rounds
instead of 8: each new skip set costs a 4.0 s compile on the H200 (its profile, BENCHMARKS.md
section 2), and CLaSp's warm-up run compiles every set its timed runs will use, which at the
H100 settings would take longer than the device time of a session.
"""

from configs import h100


def get_config():
  c = h100.get_config()
  c.name = "h200"
  c.max_new_tokens = 128
  c.long_max_new_tokens = 256
  c.method_options = "clasp.interval=32"
  # Output: a new results/tmp/h200-<time>/ folder; experiments/gpu/*.sh pass
  # --config.output_dir=$OUT/<part> (the committed runs are under results/h200/).
  return c
