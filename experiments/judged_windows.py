"""How KnapSpec's kept drafts fared against AR in a benchmark run, window by window: for each
prompt, the first `judge_windows` full drafting windows of a draft at a bucket (the windows
`KnapSpecPolicy.observe` judges together), their tokens over their seconds, and that against the
median of the prompt's AR runs (warm-ups and timed runs, `ar` and `ar-rerun`), with what a
keep margin would decide.

  python experiments/judged_windows.py \
      results/h200_qwen/exit_model_try_below_docs_1024/results.jsonl [--keep_margin=0.02]

An approximation of the policy's judgement, not a replay: the policy compares with the AR speeds
on record at that moment (Model.ar_speeds: earlier prompts' and plain windows' runs too).
"""

import pathlib
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import decoding, methods  # noqa: E402
from summarize import ar_runs, full_drafting_windows, read_records  # noqa: E402

_JUDGE = flags.DEFINE_integer("judge_windows", methods.KnapSpecConfig().judge_windows,
                              "Full windows judged together.")
_MARGIN = flags.DEFINE_float("keep_margin", methods.KnapSpecConfig().keep_margin,
                             "Fraction the windows must beat AR by.")
_MIN_ROUNDS = flags.DEFINE_integer(
    "min_rounds", 16, "Shorter windows are left out (the short ones at a generation's end; the "
    f"policy itself judges from {methods.JUDGE_ROUNDS} rounds, methods.JUDGE_ROUNDS).")
_NO_CAP = sys.maxsize  # the records do not say the cache's capacity; no bucket reaches it here


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("one results.jsonl")
  records = read_records(argv[1])
  print("| prompt | bucket | draft (attention + MLP, gamma) | windows (tok/s) | together | AR "
        "median | ratio | keep at margin |")
  print("|---|---|---|---|---|---|---|---|")
  for rec in records:
    if rec["method"] != "knapspec":
      continue
    ar = ar_runs(records, rec["item_id"])
    if not ar:
      continue
    ar_median = statistics.median(ar)
    groups = {}  # the policy counts a draft's windows at a bucket across generations
    for w in full_drafting_windows(rec.get("warmup_windows", []) + rec.get("timed_windows", []),
                                   _MIN_ROUNDS.value):
      d = w["decision"]
      key = (decoding.attn_bucket(w["context"], _NO_CAP), tuple(d["skip"]), d["gamma"])
      groups.setdefault(key, []).append(w)
    for key, windows in groups.items():
      if len(windows) < _JUDGE.value:
        continue
      judged = windows[:_JUDGE.value]
      tokens = sum(w["tokens"] for w in judged)
      seconds = sum(w["tokens"] / w["measured_tokens_per_s"] for w in judged)
      d = judged[0]["decision"]
      ratio = tokens / seconds / ar_median
      speeds = ", ".join(f"{w['measured_tokens_per_s']:.0f}" for w in judged)
      print(f"| {rec['item_id']} | {key[0]} | {d['n_attn_skipped']} + {d['n_mlp_skipped']}, "
            f"{d['gamma']} | {speeds} | "
            f"{tokens / seconds:.0f} | {ar_median:.0f} | {ratio:.3f} | "
            f"{'keep' if ratio >= 1 + _MARGIN.value else 'drop'} |")


if __name__ == "__main__":
  sys.exit(app.run(main))
