"""The smallest end-to-end run (tests/test_experiments.py): one Spec-Bench question, 8 new
tokens, AR, KnapSpec and the fixed-set baseline, with the committed CPU latency profile."""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "tiny"
  c.methods = "ar,knapspec,fixed"
  c.categories = "writing"
  c.long_lengths = ""
  c.max_new_tokens = 8
  c.warmup_runs = 0
  c.profile = "profiles/cpu__AMD_EPYC_x2__SmolLM2-135M-Instruct.Q4_1.gguf__float32.json"
  return c
