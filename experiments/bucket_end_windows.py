"""KnapSpec's windows that a confirmed draft decoded to its attention bucket's end, each against
AR alone: what `KnapSpecConfig.bucket_end_alone` judges (BENCHMARKS.md 10.56).

  python experiments/bucket_end_windows.py results/h100*/**/results.jsonl.gz

Per record file that has any: the windows run to a bucket's end (their decision's reason says
so), those of at least --min_rounds rounds (the option's half of `interval`), and those slower
than AR by --keep_margin, each listed with its ratio. AR is the speed the policy judged against
where the reason names it ("measured N", records since session 49), else the median of the
prompt's AR runs (warm-ups and timed runs, `ar` and `ar-rerun`; marked *): an approximation, as
in judged_windows.py.
"""

import pathlib
import re
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import methods  # noqa: E402
from summarize import ar_runs, read_records, record_windows  # noqa: E402

_DEFAULTS = methods.KnapSpecConfig()
_MARGIN = flags.DEFINE_float("keep_margin", _DEFAULTS.keep_margin,
                             "Fraction a window must beat AR by.")
_MIN_ROUNDS = flags.DEFINE_integer("min_rounds", _DEFAULTS.bucket_end_rounds,
                                   "Shorter windows are not judged alone.")
_AR_MEASURED = re.compile(r"measured (\d+(?:\.\d+)?)[;)]")


def bucket_end_windows(records, keep_margin: float, min_rounds: int) -> tuple[dict, list]:
  """(counts, the judged windows that lose alone as (prompt, context, rounds, tokens, tok/s,
  AR tok/s, AR from the policy's reason))."""
  counts, losing = dict(to_end=0, judged=0, losing=0), []
  for rec in records:
    if rec["method"] != "knapspec":
      continue
    ar = ar_runs(records, rec["item_id"])
    for _, w in record_windows(rec):
      reason = w["decision"]["reason"]
      if "to the bucket's end" not in reason:
        continue
      counts["to_end"] += 1
      if w["rounds"] < min_rounds:
        continue
      named = _AR_MEASURED.search(reason)
      if named is None and not ar:
        continue
      counts["judged"] += 1
      judge = float(named.group(1)) if named else statistics.median(ar)
      if w["measured_tokens_per_s"] < (1 + keep_margin) * judge:
        counts["losing"] += 1
        losing.append((rec["item_id"], w["context"], w["rounds"], w["tokens"],
                       w["measured_tokens_per_s"], judge, named is not None))
  return counts, losing


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl files")
  print(f"| records | windows to a bucket's end | of {_MIN_ROUNDS.value}+ rounds | slower "
        f"than AR by {_MARGIN.value:.0%} |")
  print("|---|---|---|---|")
  every = []
  for path in argv[1:]:
    counts, losing = bucket_end_windows(read_records(path), _MARGIN.value, _MIN_ROUNDS.value)
    if counts["to_end"]:  # records from before bucket_windows (session 34) have none
      print(f"| {path} | {counts['to_end']} | {counts['judged']} | {counts['losing']} |")
    every += [(path, *w) for w in losing]
  if every:
    print("\n| records | prompt | context | rounds | tokens | tok/s | AR | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for path, item, n, rounds, tokens, speed, ar, named in every:
      print(f"| {path} | {item} | {n} | {rounds} | {tokens} | {speed:.0f} | "
            f"{ar:.0f}{'' if named else '*'} | {speed / ar:.3f} |")


if __name__ == "__main__":
  app.run(main)
