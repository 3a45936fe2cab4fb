"""What KnapSpecConfig.confirm_margin decides on recorded runs: for every KnapSpec trial window
followed by a full window of the same draft (in the same generation's window log), their tokens
over the seconds the profile times their rounds at, against the profile's AR (the decision's
ar_tpt), the verdict of `methods.confirms_trial` at the given margin, and how the draft fared:
its full windows' measured tokens/s in that generation (the first one included) against the
median of the prompt's timed AR runs.

  python experiments/trial_confirmation_replay.py [--confirm_margin=0.03] \
      [results/h200_qwen/exit_model_try_below_docs_1024/results.jsonl ...]

With no path, every results.jsonl(.gz) under results/ that holds KnapSpec records.
"""

import pathlib
import statistics
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from knapspec_jax import methods  # noqa: E402
from summarize import full_drafting_windows, read_records  # noqa: E402

_MARGIN = flags.DEFINE_float("confirm_margin", methods.KnapSpecConfig().confirm_margin,
                             "The confirmation's margin (KnapSpecConfig.confirm_margin).")


def pairs(record):
  """(trial window, the full window after it, the draft's full windows from that one on) in
  each of the record's generations (warm-ups and timed runs)."""
  for run in record.get("warmup_windows", []) + record.get("timed_windows", []):
    run = run or []
    for i, (trial, after) in enumerate(zip(run, run[1:])):
      d = trial["decision"]
      same = lambda w: (w["decision"]["skip"], w["decision"]["gamma"]) == (d["skip"], d["gamma"])
      if (d["gamma"] and "a trial of" in d["reason"] and trial["rounds"] and same(after)
          and after["rounds"] >= methods.JUDGE_ROUNDS):
        later = [w for w in full_drafting_windows([run[i + 1:]], 16) if same(w)]
        yield trial, after, later


def main(argv):
  paths = argv[1:] or sorted(p for p in (REPO / "results").rglob("results.jsonl*"))
  print("| record | prompt | context | trial (tokens, profile tok/s) | first full window | "
        "together / AR predicted | verdict | its full windows (measured tok/s) | AR measured |")
  print("|---|---|---|---|---|---|---|---|---|")
  for path in paths:
    records = read_records(path)
    for rec in records:
      if rec.get("method") != "knapspec":
        continue
      ar = [s for r in records if r["item_id"] == rec["item_id"] and r["method"] == "ar"
            for s in r.get("tokens_per_s_runs", [])]
      for trial, after, later in pairs(rec):
        tokens = trial["tokens"] + after["tokens"]
        seconds = trial["predicted_s"] + after["predicted_s"]
        ar_tpt = trial["decision"]["ar_tpt"]
        kept = methods.confirms_trial(tokens, seconds, ar_tpt, _MARGIN.value)
        folder = pathlib.Path(path).resolve().parent
        name = str(folder.relative_to(REPO / "results")
                   if folder.is_relative_to(REPO / "results") else folder)
        speeds = ", ".join(f"{w['measured_tokens_per_s']:.0f}" for w in later)
        ar_median = f"{statistics.median(ar):.0f}" if ar else "–"
        print(f"| {name} | {rec['item_id']} | {trial['context']} | {trial['tokens']}, "
              f"{trial['tokens'] / trial['predicted_s']:.0f} | {after['tokens']}, "
              f"{after['tokens'] / after['predicted_s']:.0f} | {tokens / seconds / ar_tpt:.3f} | "
              f"{'keep' if kept else 'drop'} | {speeds} | {ar_median} |")


if __name__ == "__main__":
  sys.exit(app.run(main))
