"""KnapSpec against AR alone on the CPU tables' prompts (2 vCPU, float32), for issue 3's
">= 0.97x AR on every prompt": the Spec-Bench subset and the 2K / 4K / 6.5K documents of
configs/cpu_full.py, 128 new tokens each, AR rerun as the noise floor, timed runs round-robin:
medians of 9 on Spec-Bench and of 5 on the documents (each of those runs decodes 4-9 s; their
prefill, 5-40 s a run, is what limits the count). On this VM single runs of one program spread
by +-4-8%, so cpu_full's medians of 3 (and a first medians-of-5 run at 64 tokens, BENCHMARKS.md
section 4) moved a prompt's ratio by about +-3-5%. About 40 minutes on the 2-vCPU dev machine.

  flock -x /tmp/knapspec/cpu.lock python experiments/benchmark.py --config=configs/cpu_knapspec.py
"""

from configs import cpu_full


def get_config():
  c = cpu_full.get_config()
  c.name = "cpu_knapspec"
  c.methods = "ar,knapspec"
  c.max_new_tokens = 128
  c.long_max_new_tokens = 128
  c.repeats = 9
  c.long_repeats = 5
  # Output: a new results/tmp/cpu_knapspec-<time>/ folder. The committed run is in
  # results/cpu/knapspec_vs_ar/;
  # rewrite it on purpose with --config.output_dir=results/cpu/knapspec_vs_ar --overwrite.
  return c
