"""Predicted against measured tokens/s over the drafting windows of benchmark runs (issue 13
item 7, the paper's analysis 1 on real generations): for each method's full drafting windows
(`timed_windows`, at least --min_rounds rounds, trials left out), the decision's predicted TPT
(latency profile and the search's acceptance estimate, before the window ran) and the profile's
time of the window as it ran (its own acceptance, and the profile's cost of the call that ran it
where the profile measured one: metrics.predicted_wall_s), each against the window's measured
tokens/s.

  python experiments/window_prediction.py results/h200_qwen/RUN/results.jsonl [...]
  python experiments/window_prediction.py --profile=profiles/NVIDIA_H200__qwen...json RUN/...

--profile times each window as it ran with another profile (its rounds at that profile's costs,
plus its call_s) instead of the one the run used: an old run read with a newer profile.

Prints, per method and pooled: windows, Pearson r of each prediction with the measured speed,
and the median relative error of the profile's window time; per prompt, the range of each.
--plot=PATH.png also draws the pooled windows: measured tokens/s against each of the two
predictions, one colour per prompt, each panel with its Pearson r and the line where prediction
equals measurement.
"""

import statistics
import sys

from absl import app, flags
import numpy as np

from summarize import full_drafting_windows, read_records
from knapspec_jax import metrics
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.selection import Decision
from knapspec_jax.skip_mask import SkipMask

_MIN_ROUNDS = flags.DEFINE_integer("min_rounds", 16, "Shorter windows are left out.")
_PROFILE = flags.DEFINE_string("profile", None, "A latency profile (.json) to time the windows "
                               "with instead of the run's own.")
_CAPACITY = flags.DEFINE_integer("capacity", 32768, "The model's KV cache positions (with "
                                 "--profile: the attention bucket of each window).")
_PLOT = flags.DEFINE_string("plot", None, "A .png to draw the pooled windows into.")
_TITLE = flags.DEFINE_string("title", "", "What the plot's windows are (machine, model, runs).")


def _profile_wall_s(profile: LatencyProfile, w: dict) -> float:
  """The window's seconds at `profile`'s costs, as the controller predicts them (its rounds at
  the bucket it started in) plus one call."""
  d = w["decision"]
  decision = Decision(SkipMask(tuple(d["skip"])), d["gamma"], d["alpha"], d["predicted_tpt"],
                      d["ar_tpt"], d["best_tpt"], d["context"], d["reason"])
  attn_len = metrics.window_attn_len(w, _CAPACITY.value)
  return metrics.predicted_window_s(profile, decision, attn_len, w["tokens"], w["rounds"],
                                    w["draft_forwards"], w["ar_tokens_while_compiling"]
                                    ) + profile.call_s


def _r(x, y) -> float:
  return float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and np.std(x) > 0 else float("nan")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  rows = {}
  profile = LatencyProfile.load(_PROFILE.value) if _PROFILE.value else None
  wall_s = (lambda w: _profile_wall_s(profile, w)) if profile else metrics.predicted_wall_s
  for path in argv[1:]:
    for rec in read_records(path):
      for w in full_drafting_windows(rec.get("timed_windows") or [], _MIN_ROUNDS.value):
        d = w["decision"]
        if d["predicted_tpt"]:
          rows.setdefault(rec["method"], []).append(
              (d["predicted_tpt"], w["tokens"] / wall_s(w), w["measured_tokens_per_s"],
               rec["item_id"]))
  print("| method | windows | prompts | r (decision's TPT) | r (profile, window as it ran) | "
        "profile's median error |")
  print("|---|---|---|---|---|---|")
  pooled = [row for method in sorted(rows) for row in rows[method]]
  for name, sel in [(m, rows[m]) for m in sorted(rows)] + [("pooled", pooled)]:
    tpt, ran, measured = (np.array([row[i] for row in sel]) for i in range(3))
    items = {row[3] for row in sel}
    error = statistics.median(abs(r / m - 1) for r, m in zip(ran, measured))
    print(f"| {name} | {len(sel)} | {len(items)} | {_r(tpt, measured):.3f} | "
          f"{_r(ran, measured):.3f} | {error:.1%} |")
  print("\n| prompt | windows | decision's TPT | profile, window as it ran | measured tokens/s |")
  print("|---|---|---|---|---|")
  for item in dict.fromkeys(row[3] for row in pooled):
    sel = [row for row in pooled if row[3] == item]
    span = lambda i: f"{min(r[i] for r in sel):.0f}-{max(r[i] for r in sel):.0f}"
    print(f"| {item} | {len(sel)} | {span(0)} | {span(1)} | {span(2)} |")
  if _PLOT.value:
    print(f"wrote {plot(pooled, _PLOT.value, _TITLE.value)}")


def plot(rows, path, title: str):
  """Measured tokens/s against the decision's TPT and against the profile's time of the window
  as it ran, side by side (rows: (tpt, as ran, measured, prompt))."""
  import plots  # noqa: PLC0415 (matplotlib only when a plot is asked for)
  tpt, ran, measured = (np.array([row[i] for row in rows]) for i in range(3))
  panels = {"the decision's predicted TPT (before the window)": tpt,
            "the profile's tokens/s for the window as it ran": ran}
  return plots.predicted_vs_measured(
      panels, measured, [row[3] for row in rows], path, title=title,
      notes={what: f"Pearson r = {_r(x, measured):.3f}, {len(rows)} windows"
             for what, x in panels.items()})


if __name__ == "__main__":
  sys.exit(app.run(main))
