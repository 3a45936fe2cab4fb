"""What a declining KnapSpec costs over AR: the host work around a plain window.

  python experiments/plain_overhead.py --max_new_tokens=4,32 --repeats=30

When KnapSpec decides not to draft it decodes with AR's own compiled programs, so any gap in
decode time is the controller's host work (decisions, device reads, bookkeeping). The two
methods run alternately on one prompt; the script prints the median decode seconds of each and
the median of the per-pair difference, in milliseconds.
"""

import pathlib
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, latency  # noqa: E402

_NEW = flags.DEFINE_list("max_new_tokens", ["4", "32"], "Token budgets.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Pairs of runs per budget.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "float32 or bfloat16.")


def main(argv):
  del argv
  model = ks.load_model(dtype=_DTYPE.value)
  item = datasets.spec_bench_subset(1, ["writing"])[0]
  ids = datasets.encode(model.tokenizer, item)
  print(f"{model.name} {model.dtype} on {latency.device_name()}, prompt {item['id']} "
        f"({len(ids)} tokens)")
  print("| new tokens | AR decode ms | KnapSpec decode ms | KnapSpec - AR, median of pairs (ms) "
        "| KnapSpec / AR tokens/s |")
  print("|---|---|---|---|---|")
  for n in map(int, _NEW.value):
    runs = {"ar": [], "knapspec": []}
    for method in runs:  # untimed first runs
      ks.generate(model, ids, n, method=method, ignore_eos=True)
    for _ in range(_REPEATS.value):
      for method in runs:
        runs[method].append(ks.generate(model, ids, n, method=method, ignore_eos=True))
    ar = [r.decode_s for r in runs["ar"]]
    kn = [r.decode_s for r in runs["knapspec"]]
    assert all(r.output_ids == runs["ar"][0].output_ids for r in runs["knapspec"])
    assert all(r.stats["drafting_windows"] == 0 for r in runs["knapspec"])
    diff = statistics.median(k - a for k, a in zip(kn, ar))
    print(f"| {n} | {statistics.median(ar) * 1e3:.2f} | {statistics.median(kn) * 1e3:.2f} | "
          f"{diff * 1e3:+.2f} | {statistics.median(ar) / statistics.median(kn):.3f} |",
          flush=True)


if __name__ == "__main__":
  app.run(main)
