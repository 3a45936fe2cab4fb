"""How repetitive the text behind each speedup is (issue 13: in bfloat16 a speculative method's
output can leave AR's, and a speedup then belongs to another text; BENCHMARKS.md 10.47).

  python experiments/text_repetition.py results/h100_qwen/round_len_session43/*/h200_qwen/results.jsonl.gz

AR's cost per token does not depend on what it writes, a draft's does: a text that falls into a
loop is drafted almost for free. For every record (benchmark.py's results.jsonl or .jsonl.gz),
one row: the records' number (listed first), the prompt, the method, its paired speedup over AR,
the token where its output leaves AR's ("-": AR's own text), and the share of distinct n-grams
among the last --tail tokens of its output and of AR's in the same run (1.00: no n-gram twice;
0.00: one short loop; metrics.distinct_share). Records since session 43 carry it as
`distinct_8gram_share`; this recomputes it for any n and tail, older records included. A
speedup whose text is a loop where AR's is not (or the reverse) does not compare with one
measured on AR's text.
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)
from knapspec_jax.metrics import distinct_share  # noqa: E402
from summarize import read_records  # noqa: E402

_N = flags.DEFINE_integer("n", 8, "Tokens per n-gram.")
_TAIL = flags.DEFINE_integer("tail", 512, "The output's last tokens the share is taken over.")


def rows(records, source: int, n: int, tail: int) -> list[dict]:
  """One row per record holding output ids; AR's share is the AR record's of the same prompt
  (and run: records are read one file at a time)."""
  share = lambda r: distinct_share(r["output_ids"], n, tail)
  ar_share = {r["item_id"]: share(r) for r in records
              if r.get("method") == "ar" and r.get("output_ids")}
  return [dict(source=source, item=r["item_id"], method=r["method"],
               paired=r.get("paired_speedup"), departs=r.get("departs_at"), share=share(r),
               ar_share=ar_share.get(r["item_id"]))
          for r in records if r.get("output_ids")]


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("name one or more results.jsonl(.gz) files")
  table = []
  for i, path in enumerate(paths, 1):
    print(f"records {i}: {path}")
    table += rows(read_records(path), i, _N.value, _TAIL.value)
  print(f"\n| records | prompt | method | paired x AR | leaves AR's text at | distinct "
        f"{_N.value}-grams, last {_TAIL.value} | AR's |")
  print("|---|---|---|---|---|---|---|")
  for t in table:
    paired = "–" if t["paired"] is None else f"{t['paired']:.3f}"
    departs = "-" if t["departs"] is None else str(t["departs"])
    ar_share = "–" if t["ar_share"] is None else f"{t['ar_share']:.2f}"
    print(f"| {t['source']} | {t['item']} | {t['method']} | {paired} | {departs} | "
          f"{t['share']:.2f} | {ar_share} |")


if __name__ == "__main__":
  app.run(main)
