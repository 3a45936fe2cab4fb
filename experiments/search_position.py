"""What each KnapSpec search predicted, against how far into the answer its reference tokens lay
(issue 13: on a long answer's first tokens a search finds no draft that pays; BENCHMARKS.md
10.42).

  python experiments/search_position.py results/h100_qwen/docs_session38/*/h200_qwen/results.jsonl.gz

The search scores drafts on the last n_ref confirmed tokens, so a search at a context n that
lies g tokens into the generation (g = n - the prompt's tokens) scores them on the answer's
tokens g - n_ref .. g (part of the prompt where g < n_ref). For every window of a KnapSpec
record whose decision ran a search, one row: the records' number (listed first), the prompt,
the run (W: warm-up, T: timed), g, the context, the search's seconds, and its own best
prediction (the first "predicts / predicted X.XXx AR" of the decision's reason: methods.py puts
the search's own best first, before a borrowed draft's; "no candidate survived the search"
names none). A decision that ran no search names no such prediction; its search_s (the
decision's own milliseconds) does not tell it apart. Then per prompt: the predictions of the
searches with g <= --first against those further in.
"""

import pathlib
import re
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from summarize import read_records, record_windows  # noqa: E402

_FIRST = flags.DEFINE_integer(
    "first", 16, "Generated tokens up to which a search counts as one on the answer's first "
    "tokens (KnapSpecConfig: n_ref 16, search_after 0 search at 15).")

# selection.select's reasons: "predicted X.XXx AR" (a draft) or "... predicts X.XXx AR" (declined)
PREDICTED = re.compile(r"predict(?:s|ed) (?P<x>[\d.]+)x AR")


def searches(records, source: int = 1) -> list[dict]:
  """One row per window whose decision ran a search (its reason gives the search's best, or
  says that no candidate survived it), in the records' order."""
  out = []
  for r in records:
    if r.get("method") != "knapspec":
      continue
    for label, w in record_windows(r):
      reason = w["decision"]["reason"]
      m = PREDICTED.search(reason)
      if m is None and "no candidate survived" not in reason:
        continue
      out.append(dict(source=source, item=r["item_id"], run=label, context=w["context"],
                      seconds=w["search_s"], generated=w["context"] - r["prompt_tokens"],
                      predicted=float(m["x"]) if m else None))
  return out


def _span(values: list[float]) -> str:
  if not values:
    return "–"
  lo, hi = min(values), max(values)
  return f"{lo:.2f}x" if lo == hi else f"{lo:.2f}-{hi:.2f}x"


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  found = [s for i, path in enumerate(argv[1:], 1) for s in searches(read_records(path), i)]
  for i, path in enumerate(argv[1:], 1):
    print(f"records {i}: {path}")
  print("\n| records | prompt | run | generated tokens | context | search s | "
        "search's best, predicted |")
  print("|---|---|---|---|---|---|---|")
  for s in found:
    x = "–" if s["predicted"] is None else f"{s['predicted']:.2f}x"
    print(f"| {s['source']} | {s['item']} | {s['run']} | {s['generated']} | {s['context']} | "
          f"{s['seconds']:.3f} | {x} |")
  print(f"{len(found)} searches\n")
  print(f"| prompt | searches at <= {_FIRST.value} generated tokens | searches further in |")
  print("|---|---|---|")
  for item in dict.fromkeys(s["item"] for s in found):
    mine = [s for s in found if s["item"] == item and s["predicted"] is not None]
    first = [s["predicted"] for s in mine if s["generated"] <= _FIRST.value]
    later = [s["predicted"] for s in mine if s["generated"] > _FIRST.value]
    print(f"| {item} | {_span(first)} ({len(first)}) | {_span(later)} ({len(later)}) |")


if __name__ == "__main__":
  app.run(main)
