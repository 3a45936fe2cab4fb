"""Acceptance of speculative sampling against the official code's exact-match rule.

  python experiments/sampling_acceptance.py --max_new_tokens=64

The same draft (a fixed skip set) on the Spec-Bench subset, three seeds per prompt, under each
rule (sampling.py): "speculative" accepts a draft with probability min(1, p/q), "exact_match"
(the official KnapSpec code when sampling) only when an independent target sample equals it.
Both keep the target distribution; the first accepts more. Greedy acceptance is printed for
reference.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens per generation.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per prompt and setting.")
_GAMMA = flags.DEFINE_integer("gamma", 3, "Draft length.")


def main(argv):
  del argv
  model = ks.load_model()
  model.profile = LatencyProfile(device="synthetic: drafting pays", model=model.name,
                                 dtype="float32", n_layers=model.cfg.n_layers, c0=1e-4,
                                 a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)
  skip = ks.SkipMask.from_layers(model.cfg.n_layers, attn=range(4, 26, 2))
  config = ks.FixedConfig(skip=skip, gamma=_GAMMA.value, threshold=1e-4)
  items = datasets.spec_bench_subset(1)
  settings = [("greedy", None)]
  for temperature, top_p in ((1.0, 1.0), (0.7, 0.95)):
    for rule in ("speculative", "exact_match"):
      settings.append((f"T={temperature} top_p={top_p} {rule}",
                       dict(temperature=temperature, top_p=top_p, rule=rule)))
  print(f"draft: {skip} (fixed), gamma {_GAMMA.value}, threshold 1e-4; {len(items)} prompts, "
        f"{_MAX_NEW.value} new tokens, {_SEEDS.value} seeds per sampled setting", flush=True)
  for name, kwargs in settings:
    accepted = drafted = rounds = tokens = 0
    for item in items:
      ids = datasets.encode(model.tokenizer, item)
      for seed in range(1 if kwargs is None else _SEEDS.value):
        sampling = None if kwargs is None else ks.SamplingConfig(seed=seed, **kwargs)
        r = ks.generate(model, ids, _MAX_NEW.value, method="fixed", ignore_eos=True,
                        config=config, sampling=sampling)
        accepted += r.stats["accepted_tokens"]
        drafted += r.stats["drafted_tokens"]
        rounds += r.stats["speculation_steps"]
        tokens += r.new_tokens
    print(f"{name:<36} acceptance {accepted / max(drafted, 1):.3f} ({accepted}/{drafted}), "
          f"tokens per verify {tokens / max(rounds, 1):.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
