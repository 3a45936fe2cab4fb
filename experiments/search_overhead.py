"""Analysis 4: the search's share of wall time against the re-optimization interval.

  python experiments/search_overhead.py --lengths=100,2000 --intervals=4,8,16,32,64,128 \
      --output_dir=results/cpu/analysis/overhead

KnapSpec with its search budget lifted (`search_budget` large: every re-optimization point
searches), re-optimizing every `interval` speculation rounds (a round is one token when it
decodes plainly), for `max_new_tokens` tokens. Reported per interval: searches run, search
seconds as % of the decode wall time (which includes everything: searches, drafting, plain
decoding, any compile of a newly chosen draft), decode tokens/s and x AR. The official
interval is 64; the default `search_budget` (2%) bounds the share instead of the interval.
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import plots  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import latency, methods  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["100", "2000"], "Prompt lengths (< 300: a Spec-Bench "
                             "question).")
_INTERVALS = flags.DEFINE_list("intervals", ["4", "8", "16", "32", "64", "128"],
                               "Re-optimization intervals (speculation rounds).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 192, "Tokens per generation.")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl, summary.md and a plot go here.")


def searches(stats) -> int:
  """Decisions that ran the knapsack (the others collect tokens or skip the search)."""
  return sum(1 for d in stats.get("decisions", [])
             if d["reason"].startswith(("declined", "predicted", "no candidate")))


def main(argv):
  del argv
  started = time.perf_counter()
  model = ks.load_model()
  methods.profile_for(model)
  rows = []
  for length in map(int, _LENGTHS.value):
    item_id, ids = common.prompt_ids(model, length)
    ar = common.time_ar(model, ids, _MAX_NEW.value)
    print(f"{item_id}: {len(ids)} prompt tokens, AR {ar.tokens_per_s:.1f} tok/s", flush=True)
    for interval in map(int, _INTERVALS.value):
      config = ks.KnapSpecConfig(interval=interval, search_budget=1e6)
      r = ks.generate(model, ids, _MAX_NEW.value, method="knapspec", config=config,
                      ignore_eos=True)
      s = r.stats
      row = dict(item_id=item_id, prompt_tokens=len(ids), interval=interval,
                 searches=searches(s), search_s=s["search_s"], decode_s=r.decode_s,
                 search_pct=100 * s["search_s"] / r.decode_s,
                 compile_in_decode_s=s["compile_in_decode_s"],
                 drafting_windows=s["drafting_windows"], tokens_per_s=r.tokens_per_s,
                 ar_tokens_per_s=ar.tokens_per_s, speedup=r.tokens_per_s / ar.tokens_per_s,
                 identical_to_ar=r.output_ids == ar.output_ids,
                 device=latency.device_name(), date=time.strftime("%F"))
      rows.append(row)
      print(f"  interval {interval:4d}: {row['searches']:3d} searches, {row['search_s']:6.2f} s "
            f"= {row['search_pct']:5.1f}% of {r.decode_s:.2f} s decode; {r.tokens_per_s:6.1f} "
            f"tok/s ({row['speedup']:.2f}x AR), drafting windows {row['drafting_windows']} "
            f"{'same as AR' if row['identical_to_ar'] else 'DIFFERENT'}; "
            f"{time.perf_counter() - started:.0f} s", flush=True)
  lines = ["| prompt | prompt tokens | interval (rounds) | searches | search s | search % of "
           "decode wall | compile in decode s | drafting windows | tok/s (x AR) |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['item_id']} | {r['prompt_tokens']} | {r['interval']} | {r['searches']} | "
            f"{r['search_s']:.2f} | {r['search_pct']:.1f} | {r['compile_in_decode_s']:.1f} | "
            f"{r['drafting_windows']} | {r['tokens_per_s']:.1f} ({r['speedup']:.2f}x) |"
            for r in rows]
  out = common.report(lines, rows, _OUT.value)
  if out:
    series = {}
    for n in dict.fromkeys(r["prompt_tokens"] for r in rows):
      sub = [r for r in rows if r["prompt_tokens"] == n]
      series[f"{n}-token prompt"] = ([r["interval"] for r in sub],
                                     [r["search_pct"] for r in sub])
    plots.lines(series, out / "overhead_vs_interval.png", logx=True,
                xlabel="re-optimization interval (speculation rounds, log scale)",
                ylabel="search time (% of decode wall time)", hline=2.0,
                hline_label="default search_budget (2%)",
                title=f"Search overhead falls with the interval (SmolLM2-135M f32, "
                      f"{rows[0]['device']}, {_MAX_NEW.value} new tokens)")
    print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
