"""Chosen attention and MLP skips against context, as the runs chose them (issue 13 item 7, the
paper's analysis 2, read from benchmark records instead of searched again).

  python experiments/chosen_drafts.py results/h200_qwen/*/results.jsonl.gz \
      --plot=results/h200_qwen/chosen_drafts.png --title="..."

Every KnapSpec window whose decision ran a kept draft names the context its search chose it at
("kept (chosen at context N; ..."). A choice is a (run, skip set, gamma) at the first context
that chose it: a draft that later searches chose again, or kept at a longer prompt of the same
run (its reason then names the later context), counts once, where it first appeared. Prints
one row per choice and, per context band, the mean attention and MLP sublayers skipped and the
attention share; --plot draws each choice's attention and MLP counts against its context.

Records written since session 31 also keep each search's own best (skip set, gamma), chosen or
not (the decision's `search_best`): a search at a longer context that borrowed a shorter
context's draft, or declined, still says what the knapsack picked there. Those are a second
table, one row per search, and hollow markers on the plot; older records have none.
"""

import collections
import pathlib
import re
import statistics
import sys

from absl import app, flags

from summarize import read_records, record_windows

_PLOT = flags.DEFINE_string("plot", None, "A .png to draw the choices into.")
_TITLE = flags.DEFINE_string("title", "", "What the runs are (machine, model).")
# Context bands of the table (prompt lengths of the runs: Spec-Bench, 2K, 8K, 16K, 28K documents).
BANDS = (0, 1024, 4096, 12288, 24576)

CHOSEN = re.compile(r"kept \(chosen at context (\d+)")


def band(context: int) -> int:
  return max(b for b in BANDS if context >= b)


def decisions(paths):
  """(run, decision) for every window of the records' KnapSpec runs, warm-up and timed; the run
  is the records' folder name."""
  for path in paths:
    run = pathlib.Path(path).parent.name
    for rec in read_records(path):
      if rec.get("method") != "knapspec":
        continue
      for _, w in record_windows(rec):
        yield run, w["decision"]


def choices(paths) -> list[dict]:
  """One row per distinct (run, skip set, gamma) of the records' KnapSpec windows, at the first
  context seen."""
  seen = collections.OrderedDict()
  for run, d in decisions(paths):
    match = CHOSEN.match(d["reason"])
    if match and d.get("skip"):
      seen.setdefault((run, tuple(d["skip"]), d["gamma"]),
                      dict(run=run, context=int(match.group(1)), attn=d["n_attn_skipped"],
                           mlp=d["n_mlp_skipped"], gamma=d["gamma"]))
  return list(seen.values())


def searches(paths) -> list[dict]:
  """One row per search whose decision recorded its own best (`search_best`)."""
  return [dict(run=run, context=d["context"], attn=best["n_attn_skipped"],
               mlp=best["n_mlp_skipped"], gamma=best["gamma"])
          for run, d in decisions(paths) if (best := d.get("search_best"))]


def print_table(rows, what: str) -> None:
  print(f"| run | {what} at context | attention skipped | MLP skipped | gamma |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['run']} | {r['context']} | {r['attn']} | {r['mlp']} | {r['gamma']} |")
  print(f"\n| context band | {what} | mean attention skipped | mean MLP skipped | "
        "attention share |")
  print("|---|---|---|---|---|")
  for low in sorted({band(r["context"]) for r in rows}):
    sel = [r for r in rows if band(r["context"]) == low]
    attn, mlp = (statistics.mean(r[k] for r in sel) for k in ("attn", "mlp"))
    share = attn / max(attn + mlp, 1e-9)
    print(f"| >= {low} | {len(sel)} | {attn:.1f} | {mlp:.1f} | {share:.2f} |")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  rows, bests = choices(argv[1:]), searches(argv[1:])
  if not (rows or bests):
    raise app.UsageError("no window ran a draft that names the context it was chosen at, and "
                         "no decision recorded its search's best")
  if rows:
    print_table(rows, "chosen")
  if bests:
    print("\nEach search's own best (skip set, gamma), chosen or not:\n")
    print_table(bests, "searched")
  if _PLOT.value:
    import plots  # noqa: PLC0415 (matplotlib only when a plot is asked for)
    series = {}
    for label, sel, fill in (("chosen", rows, None), ("search's best", bests, "none")):
      if sel:
        ctx = [r["context"] for r in sel]
        for part, key, color, marker in (("attention", "attn", "tab:blue", "o"),
                                         ("MLP", "mlp", "tab:orange", "s")):
          series[f"{part} sublayers skipped ({label})"] = (
              ctx, [r[key] for r in sel],
              dict(ls="", color=color, marker=marker, **({"mfc": fill} if fill else {})))
    print("wrote " + str(plots.lines(
        series, _PLOT.value, xlabel="context the draft was chosen or searched at (tokens, "
        "log scale)", ylabel="sublayers the draft skips", title=_TITLE.value, logx=True)))


if __name__ == "__main__":
  sys.exit(app.run(main))
