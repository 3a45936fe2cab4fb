"""The CPU tables of BENCHMARKS.md (2 vCPU, float32): every method on the Spec-Bench subset (the
first question of each of the 13 categories, 64 new tokens) and on 2K / 4K / 6.5K-token
summarization documents (128 new tokens); medians of 3 timed runs after one untimed run, AR
rerun as the noise floor. About an hour on the 2-vCPU dev machine.

  flock -x /tmp/knapspec/cpu.lock python experiments/benchmark.py --config=configs/cpu_full.py
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "cpu_full"
  c.long_lengths = "2000,4000,6500"
  c.max_new_tokens = 64
  c.long_max_new_tokens = 128
  c.repeats = 3
  c.noise_floor = True
  # Output: a new results/tmp/cpu_full-<time>/ folder. The committed run is in results/cpu/full/;
  # rewrite it on purpose with --config.output_dir=results/cpu/full --overwrite.
  return c
