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
"""

import collections
import pathlib
import re
import statistics
import sys

from absl import app, flags

from summarize import read_records

_PLOT = flags.DEFINE_string("plot", None, "A .png to draw the choices into.")
_TITLE = flags.DEFINE_string("title", "", "What the runs are (machine, model).")
# Context bands of the table (prompt lengths of the runs: Spec-Bench, 2K, 8K, 16K, 28K documents).
BANDS = (0, 1024, 4096, 12288, 24576)

CHOSEN = re.compile(r"kept \(chosen at context (\d+)")


def band(context: int) -> int:
  return max(b for b in BANDS if context >= b)


def choices(paths) -> list[dict]:
  """One row per distinct (run, skip set, gamma) of the records' KnapSpec windows, at the first
  context seen."""
  seen = collections.OrderedDict()
  for path in paths:
    run = pathlib.Path(path).parent.name
    for rec in read_records(path):
      if rec.get("method") != "knapspec":
        continue
      for windows in (rec.get("warmup_windows") or []) + (rec.get("timed_windows") or []):
        for w in windows or []:
          d = w["decision"]
          match = CHOSEN.match(d["reason"])
          if match and d.get("skip"):
            context = int(match.group(1))
            key = (run, tuple(d["skip"]), d["gamma"])
            seen.setdefault(key, dict(run=run, context=context, attn=d["n_attn_skipped"],
                                      mlp=d["n_mlp_skipped"], gamma=d["gamma"]))
  return list(seen.values())


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  rows = choices(argv[1:])
  if not rows:
    raise app.UsageError("no window ran a draft that names the context it was chosen at")
  print("| run | chosen at context | attention skipped | MLP skipped | gamma |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['run']} | {r['context']} | {r['attn']} | {r['mlp']} | {r['gamma']} |")
  print("\n| context band | choices | mean attention skipped | mean MLP skipped | "
        "attention share |")
  print("|---|---|---|---|---|")
  for low in sorted({band(r["context"]) for r in rows}):
    sel = [r for r in rows if band(r["context"]) == low]
    attn, mlp = (statistics.mean(r[k] for r in sel) for k in ("attn", "mlp"))
    share = attn / max(attn + mlp, 1e-9)
    print(f"| >= {low} | {len(sel)} | {attn:.1f} | {mlp:.1f} | {share:.2f} |")
  if _PLOT.value:
    import plots  # noqa: PLC0415 (matplotlib only when a plot is asked for)
    ctx = [r["context"] for r in rows]
    series = {"attention sublayers skipped": (ctx, [r["attn"] for r in rows],
                                              dict(ls="", color="tab:blue", marker="o")),
              "MLP sublayers skipped": (ctx, [r["mlp"] for r in rows],
                                        dict(ls="", color="tab:orange", marker="s"))}
    print("wrote " + str(plots.lines(
        series, _PLOT.value, xlabel="context the draft was chosen at (tokens, log scale)",
        ylabel="sublayers the chosen draft skips", title=_TITLE.value, logx=True)))


if __name__ == "__main__":
  sys.exit(app.run(main))
