"""Analysis 3: what the two ingredients of KnapSpec's search buy, on the same prompts.

  python experiments/ablation.py --lengths=100,100,100,2000,4000 \
      --output_dir=results/cpu/analysis/ablation

Variants of the search (KnapSpecConfig fields in brackets):
  knapspec        attention and MLP as separate items, latency weights (decoupled, latency_weights)
  uniform (TPL)   separate items, every item weight 1: DEL's Tokens-per-Layer view
  whole layers    one item per layer, latency weights (decoupled=False)
  whole, uniform  one item per layer, weight 1 each
For each prompt: decode 16 tokens plainly, run each variant's search at that context, take its
best (skip set, gamma) by predicted TPT with no decline margin (on a machine where KnapSpec
declines, this measures the quality of the draft each search would have picked), and decode
`max_new_tokens` with it (one untimed run first). Reported: predicted and measured tokens/s,
measured x AR, acceptance; JSONL, a table and a plot.
"""

import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import plots  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import latency, methods  # noqa: E402

VARIANTS = {"knapspec": dict(latency_weights=True, whole_layers=False),
            "uniform (TPL)": dict(latency_weights=False, whole_layers=False),
            "whole layers": dict(latency_weights=True, whole_layers=True),
            "whole, uniform": dict(latency_weights=False, whole_layers=True)}

_LENGTHS = flags.DEFINE_list("lengths", ["100", "100", "100", "2000", "4000"],
                             "Prompt lengths (< 300: the next Spec-Bench category's question).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens decoded per timed run.")
_N_REF = flags.DEFINE_integer("n_ref", 16, "Reference tokens for the search.")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl, summary.md and a plot go here.")
_PROFILE = flags.DEFINE_string("profile", None, "Latency profile JSON (default: this device's).")


def main(argv):
  del argv
  started = time.perf_counter()
  model = ks.load_model()
  profile = (ks.LatencyProfile.load(_PROFILE.value) if _PROFILE.value
             else methods.profile_for(model))
  model.profile = profile
  rows, short = [], 0
  for length in map(int, _LENGTHS.value):
    item_id, ids = common.prompt_ids(model, length, index=short)
    short += length < common.SHORT
    point = common.decode_plainly(model, ids, _N_REF.value, _N_REF.value + 1)
    ar = common.time_ar(model, ids, _MAX_NEW.value)
    print(f"{item_id}: {len(ids)} prompt tokens, AR {ar.tokens_per_s:.1f} tok/s", flush=True)
    for name, variant in VARIANTS.items():
      cands, w, attn_len = common.search(model, point, profile, n_ref=_N_REF.value, **variant)
      best, gamma, tpt = common.best_draft(cands, profile, attn_len)
      r = common.time_fixed(model, ids, best.skip, gamma, _MAX_NEW.value)
      row = dict(item_id=item_id, prompt_tokens=len(ids), variant=name, weights=list(w),
                 n_attn_skipped=len(best.skip.attn_skipped),
                 n_mlp_skipped=len(best.skip.mlp_skipped), gamma=gamma, alpha_estimate=best.alpha,
                 predicted_tokens_per_s=tpt,
                 ar_predicted_tokens_per_s=1 / profile.t_step(None, attn_len),
                 measured_tokens_per_s=r.tokens_per_s, ar_tokens_per_s=ar.tokens_per_s,
                 speedup=r.tokens_per_s / ar.tokens_per_s,
                 measured_acceptance=r.stats.get("acceptance_rate"),
                 identical_to_ar=r.output_ids == ar.output_ids, skip=best.skip.to_list(),
                 device=latency.device_name(), date=time.strftime("%F"))
      rows.append(row)
      print(f"  {name:<15} weights {tuple(w)}: {row['n_attn_skipped']:2d} attn + "
            f"{row['n_mlp_skipped']:2d} MLP, gamma {gamma}, alpha est {best.alpha:.2f}: "
            f"predicted {tpt:6.1f}, measured {r.tokens_per_s:6.1f} tok/s ({row['speedup']:.2f}x "
            f"AR, acc {row['measured_acceptance'] or 0:.2f}) "
            f"{'same as AR' if row['identical_to_ar'] else 'DIFFERENT'}; "
            f"{time.perf_counter() - started:.0f} s", flush=True)
  lines = ["| prompt | prompt tokens | variant | attn/MLP skipped | gamma | alpha est. | "
           "predicted tok/s (x AR pred.) | measured tok/s (x AR) | acceptance |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['item_id']} | {r['prompt_tokens']} | {r['variant']} | "
                 f"{r['n_attn_skipped']}/{r['n_mlp_skipped']} | {r['gamma']} | "
                 f"{r['alpha_estimate']:.2f} | {r['predicted_tokens_per_s']:.1f} "
                 f"({r['predicted_tokens_per_s'] / r['ar_predicted_tokens_per_s']:.2f}x) | "
                 f"{r['measured_tokens_per_s']:.1f} ({r['speedup']:.2f}x) | "
                 f"{r['measured_acceptance'] or 0:.2f} |")
  lines += ["", "| variant | median measured x AR | median predicted x AR | mean acceptance |",
            "|---|---|---|---|"]
  for name in VARIANTS:
    sub = [r for r in rows if r["variant"] == name]
    lines.append(f"| {name} | {statistics.median(r['speedup'] for r in sub):.3f} | "
                 f"{statistics.median(r['predicted_tokens_per_s'] / r['ar_predicted_tokens_per_s'] for r in sub):.3f} | "
                 f"{statistics.mean(r['measured_acceptance'] or 0 for r in sub):.2f} |")
  out = common.report(lines, rows, _OUT.value)
  if out:
    prompts = list(dict.fromkeys((r["item_id"], r["prompt_tokens"]) for r in rows))
    by = {(r["item_id"], r["variant"]): r["speedup"] for r in rows}
    plots.grouped_bars(
        [f"{i.removeprefix('specbench-').removeprefix('longdoc-')}\n{n} tok" for i, n in prompts],
        {name: [by[(i, name)] for i, _ in prompts] for name in VARIANTS},
        out / "ablation.png", xlabel="prompt (Spec-Bench id or long-document length; tokens)",
        ylabel="measured decode speed / AR's (x)", hline=1.0, hline_label="AR",
        title=f"Each search variant's best draft, measured (SmolLM2-135M f32, "
              f"{rows[0]['device']})")
    print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
