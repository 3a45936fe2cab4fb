"""One command's speedup over several processes: for each prompt and method, the paired speedup
over AR (each run's own median of repeats paired with the same process's AR) in every run given,
their median and range, AR's tokens/s in each, and where the method's text left AR's.

A single process's figure is not a method's speedup: on the H200 the same command gave
KnapSpec 1.130x and 1.000x at 16K in two processes, because its search found another draft from
other reference tokens (BENCHMARKS.md 10.30). README figures quote this table.

  python experiments/spread.py results/h200_qwen/RUN_A results/h200_qwen/RUN_B ...
      [--method=knapspec]   (a run: its folder, or its results.jsonl[.gz])
"""

import pathlib
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from knapspec_jax import metrics  # noqa: E402
from summarize import read_records  # noqa: E402

_METHOD = flags.DEFINE_string("method", "", "Only this method (default: every method but AR).")


def run_records(path) -> list[dict]:
  """A run's records: a folder's results.jsonl(.gz), or the file itself."""
  path = pathlib.Path(path)
  return read_records(path / "results.jsonl" if path.is_dir() else path)


def spread_rows(runs: list[list[dict]], method: str = "") -> list[dict]:
  """One row per (prompt, method) in the order first seen: `paired` (one per run that has it),
  `ar` (AR's tokens/s in those runs), `departs_at` (per run, None where identical to AR; from
  the output tokens where a record predates the field)."""
  rows = {}
  for records in runs:
    ar = {r["item_id"]: r for r in records if r["method"] == "ar"}
    for r in records:
      if r["method"] == "ar" or (method and r["method"] != method):
        continue
      row = rows.setdefault((r["item_id"], r["method"]),
                            dict(item_id=r["item_id"], prompt_tokens=r["prompt_tokens"],
                                 method=r["method"], paired=[], ar=[], departs_at=[]))
      base = ar.get(r["item_id"])
      row["paired"].append(r["paired_speedup"])
      row["ar"].append(base and base["tokens_per_s"])
      left = r.get("departs_at")
      if left is None and not r["identical_to_ar"]:
        left = (metrics.departs_at(r["output_ids"], base["output_ids"])
                if base and "output_ids" in r and "output_ids" in base else "?")
      row["departs_at"].append(left)
  return list(rows.values())


def table(rows: list[dict]) -> str:
  out = ["| prompt | prompt tokens | method | runs | paired x AR, each run | median | range | "
         "AR tok/s, each run | text left AR's at |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    p = row["paired"]
    each = ", ".join(f"{x:.3f}" for x in p)
    ar = ", ".join("-" if a is None else f"{a:.1f}" for a in row["ar"])
    left = ", ".join("-" if d is None else str(d) for d in row["departs_at"])
    out.append(f"| {row['item_id']} | {row['prompt_tokens']} | {row['method']} | {len(p)} | "
               f"{each} | {statistics.median(p):.3f} | {min(p):.3f}-{max(p):.3f} | {ar} | "
               f"{left} |")
  return "\n".join(out)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("name one or more runs (folders or results.jsonl files)")
  print(table(spread_rows([run_records(p) for p in argv[1:]], _METHOD.value)))


if __name__ == "__main__":
  app.run(main)
