"""Markdown tables from benchmark JSONL files (what BENCHMARKS.md quotes).

  python experiments/summarize.py results/h100/run4/long/results.jsonl [--decisions]
      [--against=ar-rerun]
"""

import gzip
import json
import pathlib
import statistics
import sys


def read_records(path) -> list[dict]:
  """One results file's records, one JSON object per line. results/ keeps large raw records
  gzipped (FILE.jsonl.gz, so that the tracked tree stays small enough to travel to the GPU
  machine beside a model chunk in one 64 MiB call): a path to either name reads either file."""
  path = pathlib.Path(path)
  if not path.exists():
    other = (path.with_name(path.name[:-3]) if path.suffix == ".gz"
             else path.with_name(path.name + ".gz"))
    if other.exists():
      path = other
  with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
    return [json.loads(line) for line in f if line.strip()]


def load(paths):
  rows = []
  for p in paths:
    rows += read_records(p)
  return rows


def record_windows(record):
  """A record's windows in order, each with its run's label: the warm-up runs W0, W1, ..., then
  the timed runs T0, T1, ... (`warmup_windows`, `timed_windows`; a run may be None)."""
  for prefix, key in (("W", "warmup_windows"), ("T", "timed_windows")):
    for i, run in enumerate(record.get(key) or []):
      for w in run or []:
        yield f"{prefix}{i}", w


def ar_runs(records, item_id) -> list[float]:
  """The prompt's AR tokens/s over its `ar` and `ar-rerun` records' warm-ups and timed runs
  (records without `tokens_per_s_runs` give their `tokens_per_s`)."""
  return [s for r in records if r["item_id"] == item_id and r["method"] in ("ar", "ar-rerun")
          for s in r.get("warmup_tokens_per_s", [])
          + (r["tokens_per_s_runs"] if "tokens_per_s_runs" in r else [r["tokens_per_s"]])]


def full_drafting_windows(runs, min_rounds: int):
  """The drafting windows of a record's window logs (`warmup_windows`, `timed_windows`; a run
  may be None) that a judgement or a prediction check reads: a draft ran, not in a trial (its
  reason says so: the recorded decision keeps no round budget), for at least min_rounds rounds."""
  for run in runs:
    for w in run or []:
      d = w["decision"]
      if d["gamma"] and "trial" not in d["reason"] and w["rounds"] >= min_rounds:
        yield w


def _texts(r: dict, ar: dict | None) -> str:
  """", 8-grams 0.00 distinct, AR's 0.37" where both records carry the share, else ""."""
  if ar is None or "distinct_8gram_share" not in r or "distinct_8gram_share" not in ar:
    return ""
  return (f", 8-grams {r['distinct_8gram_share']:.2f} distinct, AR's "
          f"{ar['distinct_8gram_share']:.2f}")


def speed_table(rows) -> str:
  """Per prompt and method: median decode tokens/s (its ratio to AR's median); with paired
  ratios recorded, also the median over repeats of run / the same repeat's AR run; with AR
  timed alone (config.ar_alone), the ratio to that AR's median. Where an output leaves AR's
  text, where and (records since session 43) both texts' share of distinct 8-grams in their last
  512 tokens: a speedup on a text that loops does not compare with one on AR's text."""
  methods = list(dict.fromkeys(r["method"] for r in rows))
  out = ["| prompt | prompt tokens | " + " | ".join(methods) + " |",
         "|---|---|" + "---|" * len(methods)]
  items = list(dict.fromkeys((r["item_id"], r["prompt_tokens"]) for r in rows))
  for item, n in items:
    cells = []
    ar = next((x for x in rows if x["item_id"] == item and x["method"] == "ar"), None)
    for m in methods:
      r = next((x for x in rows if x["item_id"] == item and x["method"] == m), None)
      paired = "" if r is None or r.get("paired_speedup") is None or m == "ar" else (
          f", paired {r['paired_speedup']:.3f}x")
      alone = "" if r is None or r.get("speedup_vs_ar_alone") is None else (
          f", {r['speedup_vs_ar_alone']:.3f}x AR alone")
      cells.append("" if r is None else f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}x{paired}"
                   f"{alone})" + ("" if r["identical_to_ar"] else " ≠AR"
                                  + (f" from token {r['departs_at']}"
                                     if r.get("departs_at") is not None else "")
                                  + _texts(r, ar)))
    out.append(f"| {item} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def method_table(rows) -> str:
  out = ["| method | median x AR (decode) | min x AR | min x AR, paired | median x AR "
         "(end-to-end) | acceptance | tokens / verify step | search % of decode | identical to "
         "AR | profile error (median) |", "|---|---|---|---|---|---|---|---|---|---|"]
  for m in dict.fromkeys(r["method"] for r in rows):
    rs = [r for r in rows if r["method"] == m]
    sp = [r["speedup"] for r in rs]
    e2e = [r["e2e_speedup"] for r in rs]
    drafted = sum(r["stats"].get("drafted_tokens") or 0 for r in rs)
    accepted = sum(r["stats"].get("accepted_tokens") or 0 for r in rs)
    steps = sum(r["stats"].get("speculation_steps") or 0 for r in rs)
    search = sum(r["stats"].get("search_s") or 0 for r in rs) / sum(r["decode_s"] for r in rs)
    errs = [r["stats"]["profile_median_rel_err"] for r in rs
            if r["stats"].get("profile_median_rel_err") is not None]
    same = sum(r["identical_to_ar"] for r in rs)
    # paired: per prompt, the median over repeats of (run / the same repeat's AR run)
    paired = [r["paired_speedup"] for r in rs if r.get("paired_speedup") is not None]
    out.append(
        f"| {m} | {statistics.median(sp):.3f} | {min(sp):.3f} | "
        + (f"{min(paired):.3f} | " if len(paired) == len(rs) else "– | ")
        + f"{statistics.median(e2e):.3f} | "
        + (f"{accepted / drafted:.2f} | " if drafted else "– | ")
        + (f"{(accepted + steps) / steps:.2f} | " if steps else "– | ")
        + f"{100 * search:.2f} | {same}/{len(rs)} | "
        + (f"{100 * statistics.median(errs):.1f}% |" if errs else "– |"))
  return "\n".join(out)


def decisions(rows) -> str:
  out = ["| prompt | method | context | decision | attn/MLP skipped | gamma | alpha | "
         "predicted tok/s | AR predicted | measured tok/s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    for d in r["stats"].get("decisions", []):
      out.append(f"| {r['item_id']} | {r['method']} | {d['context']} | {d['reason']} | "
                 f"{d['n_attn_skipped']}/{d['n_mlp_skipped']} | {d['gamma']} | "
                 f"{d['alpha']:.2f} | {d['predicted_tpt']:.1f} | {d['ar_tpt']:.1f} | "
                 f"{d['measured_tokens_per_s']:.1f} |")
  return "\n".join(out)


def skip_shift(rows) -> str:
  """Per prompt: the attention and MLP sublayers skipped by each search's best draft (chosen or
  declined), averaged over the searches. Longer context should shift skipping to attention."""
  import re
  out = ["| prompt | prompt tokens | searches | mean attention skipped | mean MLP skipped | "
         "attention share |", "|---|---|---|---|---|---|"]
  for r in rows:
    if r["method"] != "knapspec":
      continue
    counts = []
    for d in r["stats"].get("decisions", []):
      m = re.search(r"(\d+) attn \+ (\d+) MLP skipped", d["reason"])
      if m:
        counts.append((int(m[1]), int(m[2])))
      elif d["gamma"] > 0:
        counts.append((d["n_attn_skipped"], d["n_mlp_skipped"]))
    if counts:
      a = statistics.mean(c[0] for c in counts)
      m_ = statistics.mean(c[1] for c in counts)
      out.append(f"| {r['item_id']} | {r['prompt_tokens']} | {len(counts)} | {a:.1f} | {m_:.1f} "
                 f"| {a / max(a + m_, 1e-9):.2f} |")
  return "\n".join(out)


def against_table(rows, base: str) -> str:
  """Per prompt and method: whether its text equals method `base`'s (e.g. AR's rerun at the same
  verify width) and the median over repeats of (its run / the same repeat's `base` run), the
  repeats paired by order as in `paired_speedup`. The question a width answers: does a method
  keep the text of plain decoding at its own kernel shapes, and how much faster is it there?"""
  out = [f"| prompt | prompt tokens | method | same text as {base} | paired median x {base} |",
         "|---|---|---|---|---|"]
  by_method = {}  # method -> [(same text, ratio)] over the prompts
  for item, n in dict.fromkeys((r["item_id"], r["prompt_tokens"]) for r in rows):
    b = next((x for x in rows if x["item_id"] == item and x["method"] == base), None)
    if b is None:
      continue
    for r in rows:
      if r["item_id"] != item or r["method"] in (base, "ar"):
        continue
      ratio = statistics.median(x / y for x, y in zip(r["tokens_per_s_runs"],
                                                      b["tokens_per_s_runs"]))
      same = r["output_ids"] == b["output_ids"]
      out.append(f"| {item} | {n} | {r['method']} | {'yes' if same else 'no'} | {ratio:.3f} |")
      by_method.setdefault(r["method"], []).append((same, ratio))
  for m, v in by_method.items():
    ratios = [x for _, x in v]
    out.append(f"| all {len(v)} | – | {m} | {sum(s for s, _ in v)}/{len(v)} | median "
               f"{statistics.median(ratios):.3f}, {min(ratios):.3f}-{max(ratios):.3f} |")
  return "\n".join(out)


def main(argv):
  paths = [a for a in argv if not a.startswith("--")]
  rows = load(paths)
  print(speed_table(rows))
  print()
  print(method_table(rows))
  if "--skips" in argv:
    print()
    print(skip_shift(rows))
  if "--decisions" in argv:
    print()
    print(decisions(rows))
  for a in argv:
    if a.startswith("--against="):
      print()
      print(against_table(rows, a.split("=", 1)[1]))


if __name__ == "__main__":
  main(sys.argv[1:])
