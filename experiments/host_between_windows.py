"""The host's time between decode windows, read from benchmark records: what each window costs
the generation outside its own measured time, where the device waits for the host.

  python experiments/host_between_windows.py results/h200_qwen/*/results.jsonl* [--method=...]

A timed run's decode time (new tokens over its tokens/s) less its windows' measured, search and
compile seconds is host work outside every window: the device reads and bookkeeping between
windows (controller.run) and the method's set-up and summary. Over every timed run of the given
methods this prints that gap by the run's window count and a least-squares line, gap = fixed +
per_window x windows. Records written since session 31 also time it per window (`host_s`: from
one window's end to the next one's start, outside the decision); their sum is printed beside it.
"""

import pathlib
import statistics
import sys

import numpy as np
from absl import app, flags

from summarize import read_records

_METHODS = flags.DEFINE_list("method", ["knapspec", "fixed", "del", "clasp"],
                             "Methods whose timed runs are read (each decodes in windows).")


def outside_windows_s(decode_s: float, windows: list[dict]) -> float:
  """A generation's decode seconds outside its windows' measured, search and compile time."""
  return decode_s - sum(w["measured_s"] + w["search_s"] + w.get("compile_s", 0.0)
                        for w in windows)


def runs(paths, methods) -> list[dict]:
  """One row per timed run with a window log: windows, gap (s), recorded host_s (s) or None."""
  rows = []
  for path in paths:
    for rec in read_records(path):
      if rec.get("method") not in methods or not rec.get("tokens_per_s_runs"):
        continue
      for tps, windows in zip(rec["tokens_per_s_runs"], rec.get("timed_windows") or []):
        if not windows:
          continue
        host = ([w["host_s"] for w in windows] if all("host_s" in w for w in windows)
                else None)
        rows.append(dict(run=pathlib.Path(path).parent.name, windows=len(windows),
                         gap_s=outside_windows_s(rec["new_tokens"] / tps, windows),
                         host_s=sum(host) if host is not None else None))
  return rows


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  rows = runs(argv[1:], set(_METHODS.value))
  if len(rows) < 2 or len({r["windows"] for r in rows}) < 2:
    raise app.UsageError(f"need timed runs of {_METHODS.value} with at least two window "
                         f"counts, got {len(rows)} run(s)")
  print("| windows | runs | gap outside windows, median (ms) | 10th-90th percentile (ms) | "
        "recorded host_s, median (ms) |")
  print("|---|---|---|---|---|")
  for k in sorted({r["windows"] for r in rows}):
    gaps = [1e3 * r["gap_s"] for r in rows if r["windows"] == k]
    host = [1e3 * r["host_s"] for r in rows if r["windows"] == k and r["host_s"] is not None]
    p10, p90 = np.percentile(gaps, [10, 90])
    print(f"| {k} | {len(gaps)} | {statistics.median(gaps):.1f} | {p10:.1f}-{p90:.1f} | "
          + (f"{statistics.median(host):.1f} |" if host else "– |"))
  x = np.array([r["windows"] for r in rows], float)
  y = np.array([1e3 * r["gap_s"] for r in rows])
  (fixed, per_window), *_ = np.linalg.lstsq(np.c_[np.ones_like(x), x], y, rcond=None)
  print(f"\nleast squares over {len(rows)} runs: gap = {fixed:.2f} ms + {per_window:.3f} ms "
        "x windows")


if __name__ == "__main__":
  sys.exit(app.run(main))
