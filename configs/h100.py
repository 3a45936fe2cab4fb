"""The H100 tables of BENCHMARKS.md (bfloat16): every method on the Spec-Bench subset (256 new
tokens) and on 2K / 4K / 7K-token summarization documents (1024 new tokens), AR rerun as the
noise floor, medians of 3 timed runs. Run on the device machine by experiments/gpu/run_benchmark.sh.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "h100"
  c.dtype = "bfloat16"
  c.noise_floor = True
  c.repeats = 3  # medians: single runs on the H100 spread by a few percent
  c.long_lengths = "2000,4000,7000"
  c.max_new_tokens = 256
  c.long_max_new_tokens = 1024
  # Output: a new results/tmp/h100-<time>/ folder; experiments/gpu/*.sh pass
  # --config.output_dir=$OUT/<part> (the committed runs are under results/h100/).
  return c
