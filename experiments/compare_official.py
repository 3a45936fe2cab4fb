"""Our decode tokens/s against the official PyTorch implementation's, prompt by prompt (issue 3,
acceptance 5c: each of our AR and KnapSpec >= 20x the official code on the same model and
prompts).

  python experiments/compare_official.py \
    --official=results/h100/session2_2026-11-23/official.jsonl \
    --ours=results/h100/run4/specbench/results.jsonl.gz,results/h100/session2_2026-11-23/long_xla/results.jsonl

--official: experiments/gpu/run_official.py's JSONL (records with impl, method
"autoregressive" or "knapspec", id, tokens_per_s_decode); --ours: experiments/benchmark.py's
JSONL files (records with item_id, method, tokens_per_s). Prints the Markdown table of
BENCHMARKS.md section 1 and the smallest ratios.
"""

from absl import app, flags

import summarize

_OFFICIAL = flags.DEFINE_string("official", None, "run_official.py JSONL.", required=True)
_OURS = flags.DEFINE_list("ours", None, "benchmark.py JSONL files.", required=True)
_TARGET = flags.DEFINE_float("target", 20.0, "The ratio the issue asks for.")

PAIRS = (("autoregressive", "ar"), ("knapspec", "knapspec"))


def main(argv):
  del argv
  official = {(r["id"], r["method"]): r for r in summarize.read_records(_OFFICIAL.value)}
  ours = {}
  for path in _OURS.value:
    for r in summarize.read_records(path):
      ours.setdefault((r["item_id"], r["method"]), r)  # the first file naming a pair wins
  ids = list(dict.fromkeys(i for i, _ in official))
  print("| prompt | prompt tokens | official AR | ours AR | ratio | official KnapSpec "
        "(acceptance) | ours KnapSpec | ratio |")
  print("|---|---|---|---|---|---|---|---|")
  ratios = {ours_m: [] for _, ours_m in PAIRS}
  for i in ids:
    cells = []
    for off_m, ours_m in PAIRS:
      o, u = official.get((i, off_m)), ours.get((i, ours_m))
      if o is None or u is None:
        cells += ["–", "–", "–"]
        continue
      ratio = u["tokens_per_s"] / o["tokens_per_s_decode"]
      ratios[ours_m].append((ratio, i))
      acc = o.get("acceptance_rate")
      cells += [f"{o['tokens_per_s_decode']:.1f}" + (f" ({acc:.2f})" if acc is not None else ""),
                f"{u['tokens_per_s']:.1f}", f"{ratio:.1f}x"]
    n = next((r["prompt_tokens"] for (j, _), r in official.items() if j == i), "")
    print(f"| {i} | {n} | " + " | ".join(cells) + " |")
  for m, rs in ratios.items():
    if rs:
      low = [f"{i} {x:.1f}x" for x, i in sorted(rs) if x < _TARGET.value]
      print(f"\n{m}: {min(rs)[0]:.1f}x - {max(rs)[0]:.1f}x the official code over {len(rs)} "
            f"prompts; under {_TARGET.value:g}x: {', '.join(low) or 'none'}")


if __name__ == "__main__":
  app.run(main)
