"""The README's one-command CPU benchmark (2 vCPU, float32): every method on four Spec-Bench
questions and one 2K-token summarization document; about 6 minutes including model load and
compiles.

  python experiments/benchmark.py --config=configs/cpu_default.py
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "cpu_default"
  c.categories = "writing,math_reasoning,translation,qa"
  c.long_lengths = "2000"
  c.max_new_tokens = 48
  # Output: a new results/tmp/cpu_default-<time>/ folder. The committed run is in
  # results/cpu/default/;
  # rewrite it on purpose with --config.output_dir=results/cpu/default --overwrite.
  return c
