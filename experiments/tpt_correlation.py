"""Analysis 1: does KnapSpec's predicted Tokens-per-Time rank drafts by their measured speed?

  python experiments/tpt_correlation.py --lengths=100,2000 --n_sets=8 --gammas=1,3,6 \
      --output_dir=results/cpu/analysis/tpt

For each prompt length: decode 16 tokens plainly, run the knapsack search there (latency
weights and uniform weights, for a spread of skip sets), pick `n_sets` candidates evenly by
the number of skipped sublayers, and decode `max_new_tokens` with each (skip set, gamma) as a
fixed draft (one untimed run first). Prediction: TPT(S, gamma) from the latency profile and the
search's acceptance estimate, as KnapSpec's stage 2 computes it. Reported: the Pearson
correlation of predicted TPT with measured tokens/s (paper: 0.837), of the acceptance estimate
alone with measured tokens/s, pooled and per context; JSONL rows and two plots.
"""

import json
import pathlib
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import plots  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import latency, methods, selection  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["100", "2000"], "Prompt lengths (< 300: a Spec-Bench "
                             "question).")
_N_SETS = flags.DEFINE_integer("n_sets", 8, "Skip sets per context.")
_GAMMAS = flags.DEFINE_list("gammas", ["1", "3", "6"], "Draft lengths per skip set.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Tokens decoded per timed run.")
_N_REF = flags.DEFINE_integer("n_ref", 16, "Reference tokens for the search.")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl, summary.md and plots go here.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params and KV dtype "
                           "(the model: $KNAPSPEC_MODEL, default the bundled SmolLM2).")
_PROFILE = flags.DEFINE_string("profile", None, "Latency profile JSON (default: this device's).")
_FROM = flags.DEFINE_string("from_jsonl", None, "Redo the table and plots from these results.")


def pick_sets(cands, n: int):
  """n candidates spread evenly over the number of skipped sublayers (distinct skip sets)."""
  unique = list({c.skip: c for c in sorted(cands, key=lambda c: c.alpha)}.values())
  unique.sort(key=lambda c: (c.skip.n_skipped, -c.alpha))
  if len(unique) <= n:
    return unique
  return [unique[int(i)] for i in np.linspace(0, len(unique) - 1, n).round()]


def main(argv):
  del argv
  if _FROM.value:
    return report([json.loads(line) for line in open(_FROM.value)])
  started = time.perf_counter()
  model = ks.load_model(dtype=_DTYPE.value)
  profile = (ks.LatencyProfile.load(_PROFILE.value) if _PROFILE.value
             else methods.profile_for(model))
  model.profile = profile
  gammas = [int(g) for g in _GAMMAS.value]
  rows = []
  for length in map(int, _LENGTHS.value):
    item_id, ids = common.prompt_ids(model, length)
    point = common.decode_plainly(model, ids, _N_REF.value, _N_REF.value + 1)
    cands = []
    for latency_weights in (True, False):
      found, weights, attn_len = common.search(model, point, profile, n_ref=_N_REF.value,
                                               latency_weights=latency_weights)
      cands += found
    ar = common.time_ar(model, ids, _MAX_NEW.value)
    chosen = pick_sets(cands, _N_SETS.value)
    print(f"{item_id}: {len(ids)} prompt tokens, AR {ar.tokens_per_s:.1f} tok/s, "
          f"{len(cands)} candidates, measuring {len(chosen)} sets x {len(gammas)} gammas",
          flush=True)
    for k, c in enumerate(chosen):
      for gamma in gammas:
        r = common.time_fixed(model, ids, c.skip, gamma, _MAX_NEW.value)
        bucket = ks.decoding.attn_bucket(len(ids) + _MAX_NEW.value // 2 + gamma + 1,
                                         point.state.cache.capacity)
        predicted = selection.draft_tpt(c.skip, c.alpha, profile, bucket, gamma)
        row = dict(item_id=item_id, prompt_tokens=len(ids), context_bucket=bucket,
                   skip=c.skip.to_list(), n_attn_skipped=len(c.skip.attn_skipped),
                   n_mlp_skipped=len(c.skip.mlp_skipped), gamma=gamma, alpha_estimate=c.alpha,
                   predicted_tokens_per_s=predicted, ar_predicted_tokens_per_s=1 / profile.t_step(
                       None, bucket),
                   measured_tokens_per_s=r.tokens_per_s, ar_tokens_per_s=ar.tokens_per_s,
                   measured_acceptance=r.stats.get("acceptance_rate"),
                   tokens_per_step=r.stats.get("mean_accepted_per_step"),
                   identical_to_ar=r.output_ids == ar.output_ids, device=latency.device_name(),
                   date=time.strftime("%F"))
        rows.append(row)
        print(f"  [{len(rows)}/{len(chosen) * len(gammas) * len(_LENGTHS.value)}] "
              f"set {k + 1} ({row['n_attn_skipped']} attn + {row['n_mlp_skipped']} MLP, "
              f"alpha est {c.alpha:.2f}) gamma {gamma}: predicted {predicted:6.1f}, measured "
              f"{r.tokens_per_s:6.1f} tok/s (acc {row['measured_acceptance'] or 0:.2f}) "
              f"{'same as AR' if row['identical_to_ar'] else 'DIFFERENT'}; "
              f"{time.perf_counter() - started:.0f} s", flush=True)
  report(rows)


def correlations(rows) -> dict:
  pred = [r["predicted_tokens_per_s"] for r in rows]
  meas = [r["measured_tokens_per_s"] for r in rows]
  alpha = [r["alpha_estimate"] for r in rows]
  out = {"all": (common.pearson(pred, meas), common.pearson(alpha, meas), len(rows))}
  for item in dict.fromkeys(r["item_id"] for r in rows):
    sub = [r for r in rows if r["item_id"] == item]
    out[f"{item} ({sub[0]['prompt_tokens']} tok)"] = (
        common.pearson([r["predicted_tokens_per_s"] for r in sub],
                       [r["measured_tokens_per_s"] for r in sub]),
        common.pearson([r["alpha_estimate"] for r in sub],
                       [r["measured_tokens_per_s"] for r in sub]), len(sub))
  return out


def report(rows):
  corr = correlations(rows)
  lines = ["| configurations | n | Pearson r: predicted TPT vs measured tok/s | Pearson r: "
           "acceptance estimate vs measured tok/s |", "|---|---|---|---|"]
  lines += [f"| {k} | {n} | {a:.3f} | {b:.3f} |" for k, (a, b, n) in corr.items()]
  same = sum(r["identical_to_ar"] for r in rows)
  lines.append(f"\n{same}/{len(rows)} runs produced AR's output exactly.")
  text = "\n".join(lines)
  print(text)
  if not _OUT.value:
    return
  out = pathlib.Path(_OUT.value)
  common.write_jsonl(out / "results.jsonl", rows)
  (out / "summary.md").write_text(text + "\n")
  groups = [f"{r['prompt_tokens']}-token prompt" for r in rows]
  device = rows[0]["device"]
  r_all, r_alpha, n = corr["all"]
  plots.scatter_fit(
      [r["predicted_tokens_per_s"] for r in rows], [r["measured_tokens_per_s"] for r in rows],
      out / "tpt_vs_measured.png", groups=groups,
      xlabel="predicted TPT (tokens/s, latency profile + acceptance estimate)",
      ylabel="measured decode speed (tokens/s)",
      title=f"Predicted TPT vs measured speed (SmolLM2-135M f32, {device})",
      annotate=f"Pearson r = {r_all:.3f} over {n} (skip set, gamma)\npaper: 0.837")
  plots.scatter_fit(
      [r["alpha_estimate"] for r in rows], [r["measured_tokens_per_s"] for r in rows],
      out / "alpha_vs_measured.png", groups=groups,
      xlabel="acceptance estimate (top-1 agreement, 16 reference tokens)",
      ylabel="measured decode speed (tokens/s)",
      title=f"Acceptance estimate alone vs measured speed (SmolLM2-135M f32, {device})",
      annotate=f"Pearson r = {r_alpha:.3f} over {n} (skip set, gamma)")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
