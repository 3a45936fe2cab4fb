"""How a borrowed draft scored on a search's own reference tokens, against what it then decoded
(issue 13: why a long document decoded alone drafts only after a search further into its answer,
BENCHMARKS.md 10.41, 10.42).

  python experiments/borrowed_draft_scores.py results/h100_qwen/docs_1024_session34/*/results.jsonl.gz

Where a search at a new bucket finds less than a draft kept at another bucket, the decision
keeps the borrowed draft, and its reason gives both scores: the borrowed draft's acceptance and
predicted speedup where it was chosen, and the same draft's acceptance and prediction on this
search's reference tokens ("on these tokens A, Xx"). For every such decision of a KnapSpec
record's runs, one row: the record's prompt, the context, this search's own best prediction,
the borrowed draft's score on these tokens, and what the window after the decision measured
(its accepted over drafted tokens, and its tokens/s over the profile's AR tokens/s there).
Decisions repeat across runs (warm-up and timed); each row is one window.
"""

import pathlib
import re
import sys

from absl import app

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from summarize import read_records, record_windows  # noqa: E402

# methods.py's reason for a search that kept a draft borrowed from another bucket
BORROWED = re.compile(
    r"searched here: predicted (?P<own>[\d.]+)x AR; the draft borrowed from context (?P<source>\d+)"
    r" \((?P<attn>\d+) attn \+ (?P<mlp>\d+) MLP, gamma (?P<gamma>\d+)\) predicts (?P<there>[\d.]+)x"
    r" AR \(alpha (?P<alpha>[\d.]+); on these tokens (?P<alpha_here>[\d.]+), (?P<here>[\d.]+)x\)")


def rows(records) -> list[dict]:
  """One row per window whose decision kept a borrowed draft over this bucket's own search."""
  out = []
  for r in records:
    if r.get("method") != "knapspec":
      continue
    for _, w in record_windows(r):
      d = w["decision"]
      m = BORROWED.search(d["reason"])
      if m is None:
        continue
      out.append(dict(
          item=r["item_id"], context=w["context"], own=float(m["own"]),
          draft=f"{m['attn']} + {m['mlp']}, gamma {m['gamma']}", source=int(m["source"]),
          alpha_there=float(m["alpha"]), alpha_here=float(m["alpha_here"]),
          predicted_here=float(m["here"]),
          measured_alpha=w["accepted"] / w["drafted"] if w.get("drafted") else float("nan"),
          measured_x_ar=w["measured_tokens_per_s"] / d["ar_tpt"]))
  return out


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  found = rows(r for path in argv[1:] for r in read_records(path))
  print("| prompt | context | own search | borrowed draft (from) | alpha there | alpha on these "
        "tokens, predicted | window: alpha, x AR (profile) |")
  print("|---|---|---|---|---|---|---|")
  for x in found:
    print(f"| {x['item']} | {x['context']} | {x['own']:.2f}x | {x['draft']} ({x['source']}) | "
          f"{x['alpha_there']:.2f} | {x['alpha_here']:.2f}, {x['predicted_here']:.2f}x | "
          f"{x['measured_alpha']:.2f}, {x['measured_x_ar']:.2f}x |")
  print(f"{len(found)} windows")


if __name__ == "__main__":
  app.run(main)
