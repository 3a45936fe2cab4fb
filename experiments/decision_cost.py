"""What a KnapSpec decision costs the host when it drafts with a kept draft (no search): each
generation's first such decision asks whether the draft's program is compiled, which builds the
segment program's argument shapes once per generation (KnapSpecPolicy.segment_compiled).

  python experiments/decision_cost.py --generations=6

SmolLM2 on this machine's default device, one Spec-Bench prompt: a draft is kept at every bucket
the run visits (so every generation drafts with it, and `observe` keeps it: its recorded windows
run far above AR), then each generation's decisions are timed (wall milliseconds, and cProfile's
top functions over the later generations), and what the decode compiled is printed (0 s: the
program the decision found compiled is the one the window then called).
"""

import cProfile
import io
import pathlib
import pstats
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, methods  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_GENERATIONS = flags.DEFINE_integer("generations", 6, "Generations; the first compiles.")
_NEW = flags.DEFINE_integer("max_new_tokens", 24, "New tokens per generation.")
_TOP = flags.DEFINE_integer("top", 12, "cProfile rows to print.")


def main(argv):
  del argv
  model = ks.load_model()
  item = datasets.spec_bench_subset(1, ["writing"])[0]
  ids = datasets.encode(model.tokenizer, item)
  n, n_layers = len(ids), model.cfg.n_layers
  capacity = KVCache.capacity_for(model.cfg)
  skip = SkipMask.from_layers(n_layers, attn=range(2, n_layers - 2, 2),
                              mlp=range(3, n_layers - 2, 4))
  buckets = sorted({attn_bucket(x, capacity) for x in range(n, n + _NEW.value + 8)})
  profiler, timed = cProfile.Profile(), []
  decide = methods.KnapSpecPolicy.decide

  def timed_decide(policy, model_, state, ctx):
    start = time.perf_counter()
    profiler.enable()
    decision = decide(policy, model_, state, ctx)
    profiler.disable()
    timed.append(((time.perf_counter() - start) * 1e3, decision.reason.split(";")[0]))
    return decision

  methods.KnapSpecPolicy.decide = timed_decide
  for i in range(_GENERATIONS.value):
    for b in buckets:  # measured far above AR: kept, confirmed, drafted with
      model.kept_drafts[b] = methods.KeptDraft(skip, 3, 0.6, n, measured_tpt=1e4, windows=2,
                                               tokens=20000, seconds=1.0)
    timed.clear()
    if i == 1:
      profiler = cProfile.Profile()  # the later generations only
    result = ks.generate(model, ids, _NEW.value, method="knapspec", ignore_eos=True)
    print(f"generation {i}: " + "; ".join(f"{ms:.2f} ms ({why})" for ms, why in timed)
          + f" | compiled in the decode: {result.stats['compile_in_decode_s']:.2f} s")
  out = io.StringIO()
  pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(_TOP.value)
  print(out.getvalue())


if __name__ == "__main__":
  app.run(main)
