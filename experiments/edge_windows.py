"""KnapSpec's drafting windows that start within a round's span of their attention bucket's end.
controller.run picks a window's program by its context plus one round's span, so such a window
runs in the next bucket's program, while `KnapSpecPolicy.observe` counts it at the bucket of its
decision's context (BENCHMARKS.md 10.53-10.54).

  python experiments/edge_windows.py results/h100_qwen/session49/docs_all_*/results.jsonl.gz
  python experiments/edge_windows.py --width=11 results/h100_qwen/session49/width11_*/results.jsonl.gz

Per record file and in all: KnapSpec's windows (warm-up and timed runs; --timed_only: timed
runs only), those that start exactly at a bucket's end, its drafting windows (rounds run), the
drafting windows at an edge and their share of the drafting windows' tokens, and the longest of
them. The span is the verify width (--width: the records do not name it) or gamma + 1, as
speculative.round_span makes it where the model's step is one or two rows wide.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import decoding  # noqa: E402
from summarize import read_records  # noqa: E402

_WIDTH = flags.DEFINE_integer("width", 0, "The runs' verify width (0: the natural gamma + 1).")
_TIMED = flags.DEFINE_bool("timed_only", False, "Leave the warm-up runs' windows out.")
_NO_CAP = sys.maxsize  # the records do not say the cache's capacity; no bucket reaches it here


def edge_counts(records, width: int = 0, timed_only: bool = False) -> dict:
  """Counts over the KnapSpec records' windows (see the module's docstring)."""
  c = dict(windows=0, at_end=0, drafting=0, edge=0, drafting_tokens=0, edge_tokens=0,
           longest=None)
  for rec in records:
    if rec["method"] != "knapspec":
      continue
    runs = rec.get("timed_windows", []) + ([] if timed_only else rec.get("warmup_windows", []))
    for window in (w for run in runs for w in run):
      n = window["context"]
      bucket = decoding.attn_bucket(n, _NO_CAP)
      c["windows"] += 1
      c["at_end"] += n == bucket
      gamma = window["decision"]["gamma"]
      if not gamma or not window["rounds"]:
        continue
      c["drafting"] += 1
      c["drafting_tokens"] += window["tokens"]
      if decoding.attn_bucket(n + (width or gamma + 1), _NO_CAP) != bucket:
        c["edge"] += 1
        c["edge_tokens"] += window["tokens"]
        if c["longest"] is None or window["tokens"] > c["longest"][1]:
          c["longest"] = (n, window["tokens"])
  return c


def row(name: str, c: dict) -> str:
  share = c["edge_tokens"] / c["drafting_tokens"] if c["drafting_tokens"] else 0.0
  longest = "–" if c["longest"] is None else f"{c['longest'][1]} tokens from {c['longest'][0]}"
  return (f"| {name} | {c['windows']} | {c['at_end']} | {c['drafting']} | {c['edge']} | "
          f"{share:.1%} | {longest} |")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl files")
  print("| records | windows | at a bucket's end | drafting | drafting at an edge | "
        "their share of drafted tokens | longest at an edge |")
  print("|---|---|---|---|---|---|---|")
  every = []
  for path in argv[1:]:
    records = read_records(path)
    print(row(path, edge_counts(records, _WIDTH.value, _TIMED.value)))
    every += records
  if len(argv) > 2:
    print(row("all", edge_counts(every, _WIDTH.value, _TIMED.value)))


if __name__ == "__main__":
  app.run(main)
