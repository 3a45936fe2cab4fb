"""The README's one-command CPU benchmark (2 vCPU, float32): every method on four Spec-Bench
questions and one 2K-token summarization document. Measured once on the CI machine (2026-12-01):
37 min 40 s wall including model load and compiles, with three other sessions' test runs beside
it (29% of the two CPUs, 11.2 min of CPU time); alone, under the exclusive CPU lock, 240 s
(BENCHMARKS.md section 8.1).

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
