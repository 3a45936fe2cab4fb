"""KnapSpec against AR alone on the CPU tables' prompts (2 vCPU, float32), for issue 3's
">= 0.97x AR on every prompt": the Spec-Bench subset (64 new tokens) and the 2K / 4K / 6.5K
documents (128 new tokens) of configs/cpu_full.py, AR rerun as the noise floor, medians of 5
timed runs round-robin (cpu_full's medians of 3 moved a single prompt's ratio by about +-5%).
About 25 minutes on the 2-vCPU dev machine.

  flock -x /tmp/knapspec/cpu.lock python experiments/benchmark.py --config=configs/cpu_knapspec.py
"""

from configs import cpu_full


def get_config():
  c = cpu_full.get_config()
  c.name = "cpu_knapspec"
  c.methods = "ar,knapspec"
  c.repeats = 5
  c.output_dir = "results/cpu/knapspec_vs_ar"
  return c
