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

import json
import statistics
import sys

from absl import app, flags

_JUDGE = flags.DEFINE_integer("judge_windows", 2, "Full windows judged together.")
_MARGIN = flags.DEFINE_float("keep_margin", 0.02, "Fraction the windows must beat AR by.")
_MIN_ROUNDS = flags.DEFINE_integer("min_rounds", 16, "Shorter windows are not judged "
                                   "(methods.JUDGE_ROUNDS).")


def _bucket(n: int) -> int:  # decoding.attn_bucket without a capacity cap
  for b in (256, 512, 1024):
    if n <= b:
      return b
  return -(-n // 1024) * 1024


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("one results.jsonl")
  records = [json.loads(line) for line in open(argv[1])]
  print("| prompt | bucket | draft (attention + MLP, gamma) | windows (tok/s) | together | AR "
        "median | ratio | keep at margin |")
  print("|---|---|---|---|---|---|---|---|")
  for rec in records:
    if rec["method"] != "knapspec":
      continue
    ar = [s for r in records
          if r["item_id"] == rec["item_id"] and r["method"] in ("ar", "ar-rerun")
          for s in r.get("warmup_tokens_per_s", []) + r["tokens_per_s_runs"]]
    if not ar:
      continue
    ar_median = statistics.median(ar)
    groups = {}  # the policy counts a draft's windows at a bucket across generations
    for run in rec.get("warmup_windows", []) + rec.get("timed_windows", []):
      for w in run:
        d = w["decision"]
        if not d["gamma"] or "trial" in d["reason"] or w["rounds"] < _MIN_ROUNDS.value:
          continue
        groups.setdefault((_bucket(w["context"]), tuple(d["skip"]), d["gamma"]), []).append(w)
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
