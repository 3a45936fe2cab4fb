"""What a draft's steps and verifies cost inside the windows that ran them, against the latency
profile (issue 13: why a draft the profile times at 1.15x AR ran 1.12x).

  python experiments/window_cost_fit.py --profile=PROFILE.json RUN/results.jsonl.gz [...]

For each prompt and draft (skip set, gamma) over the full drafting windows of the runs given
(summarize.full_drafting_windows: no trial, no plain tokens while compiling, >= --min_rounds
rounds), a least-squares fit of each window's measured seconds as

    draft_forwards * d + rounds * v + c

with the standard errors of d and v, beside the profile's draft step (t_step of the skip set),
verify of gamma + 1 and call_s at the windows' most common attention bucket. The windows'
draft forwards per round vary with the text (the confidence exit), which separates d from v;
their range is printed; where it spans less than SPREAD forwards per round, d and v trade off
freely and both fits are printed as undetermined.
A second fit holds c at the profile's call_s. Where every window ran the same rounds (64 rounds
each), v and c cannot be told apart: that fit is printed as undetermined. Beside the fits, the
two bounds that need no fit: each window's excess over the profile (its measured seconds less
the profile's call, verifies and draft steps) put wholly on its draft steps, or wholly on its
verifies (the median over the windows of the step or verify cost that would make it exact).
"""

import collections

from absl import app, flags
import numpy as np

from summarize import full_drafting_windows, read_records
from knapspec_jax import metrics
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.skip_mask import SkipMask

_PROFILE = flags.DEFINE_string("profile", None, "The latency profile to compare with.",
                               required=True)
_MIN_ROUNDS = flags.DEFINE_integer("min_rounds", 16, "Shorter windows are left out.")
_CAPACITY = flags.DEFINE_integer("capacity", 32768, "The model's KV cache positions.")


SPREAD = 0.1  # draft forwards per round: narrower, the windows cannot tell d from v


def fit(forwards, rounds, seconds, fixed_c: float | None = None) -> dict:
  """Least squares of seconds on (forwards, rounds[, 1]): d, v, c and the standard errors of d
  and v (nan where too few windows, or too alike, leave them undetermined). fixed_c: c held at
  this value."""
  f, r, y = (np.asarray(a, float) for a in (forwards, rounds, seconds))
  cols = [f, r] if fixed_c is not None else [f, r, np.ones_like(f)]
  x = np.stack(cols, axis=1)
  target = y - (fixed_c or 0.0)
  coef, *_ = np.linalg.lstsq(x, target, rcond=None)
  dof = len(y) - x.shape[1]
  if dof > 0 and np.linalg.matrix_rank(x) == x.shape[1]:
    resid = target - x @ coef
    se = np.sqrt(np.diag(resid @ resid / dof * np.linalg.inv(x.T @ x)))
  else:
    se = np.full(x.shape[1], np.nan)
  c = fixed_c if fixed_c is not None else float(coef[2])
  return dict(d=float(coef[0]), v=float(coef[1]), c=c, d_se=float(se[0]), v_se=float(se[1]))


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  profile = LatencyProfile.load(_PROFILE.value)
  groups = collections.defaultdict(list)
  for path in argv[1:]:
    for rec in read_records(path):
      for w in full_drafting_windows(rec.get("timed_windows") or [], _MIN_ROUNDS.value):
        if not w["ar_tokens_while_compiling"]:
          key = (rec["item_id"], rec["method"], tuple(w["decision"]["skip"]),
                 w["decision"]["gamma"])
          groups[key].append(w)
  print(f"profile {profile.model} on {profile.device}, {profile.dtype}; call_s "
        f"{profile.call_s * 1e3:.3f} ms. Milliseconds.")
  print("| prompt | method | draft (attention + MLP, gamma) | windows | bucket | draft forwards "
        "per round | profile: draft step | profile: verify | fit: draft step | fit: verify | "
        "fit with the profile's call: draft step | verify | excess on the draft steps | excess "
        "on the verifies |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for (item, method, bits, gamma), windows in groups.items():
    skip = SkipMask(tuple(bool(b) for b in bits))
    forwards = [w["draft_forwards"] for w in windows]
    rounds = [w["rounds"] for w in windows]
    seconds = [w["measured_s"] for w in windows]
    bucket = collections.Counter(metrics.window_attn_len(w, _CAPACITY.value)
                                 for w in windows).most_common(1)[0][0]
    per_round = [f / r for f, r in zip(forwards, rounds)]
    free = fit(forwards, rounds, seconds)
    held = fit(forwards, rounds, seconds, fixed_c=profile.call_s)
    if max(per_round) - min(per_round) < SPREAD:  # the standard errors would understate it
      free, held = (dict(r, d_se=np.nan, v_se=np.nan) for r in (free, held))
    draft_s, verify_s = profile.t_step(skip, bucket), profile.t_verify(gamma + 1, bucket)
    on_draft = np.median([(t - profile.call_s - r * verify_s) / f
                          for f, r, t in zip(forwards, rounds, seconds)])
    on_verify = np.median([(t - profile.call_s - f * draft_s) / r
                           for f, r, t in zip(forwards, rounds, seconds)])
    ms = lambda s: f"{1e3 * s:.3f}"
    fitted = lambda r, key: ("undetermined" if np.isnan(r[key + "_se"])
                             else f"{ms(r[key])} +- {ms(r[key + '_se'])}")
    print(f"| {item} | {method} | {len(skip.attn_skipped)} + {len(skip.mlp_skipped)}, {gamma} "
          f"| {len(windows)} | {bucket} | {min(per_round):.2f}-{max(per_round):.2f} "
          f"| {ms(draft_s)} | {ms(verify_s)} | {fitted(free, 'd')} | {fitted(free, 'v')} "
          f"| {fitted(held, 'd')} | {fitted(held, 'v')} | {ms(on_draft)} | {ms(on_verify)} |")


if __name__ == "__main__":
  app.run(main)
