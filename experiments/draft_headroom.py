"""How far KnapSpec's drafts could go at the acceptance they measured, by the latency profile
(issue 13: why 1.15x at 16K-28K is or is not within reach of a draft).

  python experiments/draft_headroom.py --profile=PROFILE.json \
      results/h200_qwen/keep_margin_docs_1024/results.jsonl [--target=1.15]

For each KnapSpec record, the draft its timed drafting windows used most (skip set and gamma)
and, at the attention bucket where those windows ran most:
  - the acceptance the search estimated (the decision's alpha) and the per-token acceptance
    the windows measured (accepted / drafted tokens);
  - the profile's tokens/s over AR's for that skip set at its gamma and at the best gamma
    (1..--gamma_max), at the measured acceptance, with every drafted token verified (no
    confidence exit);
  - the smallest acceptance (on a 0.005 grid) at which the best gamma reaches --target.
Beside them, the record's measured speedup (paired with AR's runs) and the draft forwards per
round its windows ran.

A second table takes the same windows' rounds as they ran, which holds also where the exit ends
drafts early: tokens per round and draft forwards per round; the profile's tokens/s for those
rounds over AR's (each window's forwards, verifies and call at its own bucket:
metrics.predicted_wall_s, AR's step at the same buckets); the windows' measured seconds over
the profile's; and the tokens per round the target needs at the same forwards per round and
profile costs. The profile's window times err by a median 1-2%
(experiments/window_prediction.py), so where the confidence exit seldom ends a draft (draft
forwards per round near gamma) the prediction at the measured acceptance says what the skip set
can give, and the needed acceptance how far it is from the goal. Where the exit ends most
drafts early (fewer than 90% of gamma per round) the no-exit model does not describe the run,
and those rows say so instead of predicting.
"""

import collections
import pathlib
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import metrics, selection  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402
from summarize import read_records  # noqa: E402

_PROFILE = flags.DEFINE_string("profile", None, "The latency profile the run decided with.",
                               required=True)
_TARGET = flags.DEFINE_float("target", 1.15, "The speedup over AR to find the acceptance for.")
_GAMMA_MAX = flags.DEFINE_integer("gamma_max", 10, "Largest draft length considered.")
_NO_CAP = sys.maxsize  # the records do not say the cache's capacity; no bucket reaches it here
ALPHA_GRID = np.round(np.arange(0.5, 1.0001, 0.005), 3)


def ratio(profile: LatencyProfile, skip: SkipMask, alpha: float, attn_len: int,
          gamma: int) -> float:
  """Predicted tokens/s of the draft over AR's, at one bucket."""
  return selection.draft_tpt(skip, alpha, profile, attn_len, gamma) * profile.t_step(None, attn_len)


def best(profile, skip, alpha, attn_len, gamma_max) -> tuple[float, int]:
  """(the best ratio over gamma 1..gamma_max, that gamma)."""
  ratios = [ratio(profile, skip, alpha, attn_len, g) for g in range(1, gamma_max + 1)]
  return max(ratios), int(np.argmax(ratios)) + 1


def drafting_windows(rec: dict) -> list[dict]:
  """The timed windows of the (skip set, gamma) a record's timed drafting windows used most."""
  windows = [w for run in rec.get("timed_windows") or [] for w in run or []
             if w["decision"]["gamma"] and w["drafted"]]
  if not windows:
    return []
  key = lambda w: (tuple(w["decision"]["skip"]), w["decision"]["gamma"])
  most = collections.Counter(map(key, windows)).most_common(1)[0][0]
  return [w for w in windows if key(w) == most]


def rounds_as_run(profile: LatencyProfile, windows: list[dict], target: float) -> dict:
  """The second table's figures for windows of one draft (see the module docstring)."""
  tokens = sum(w["tokens"] for w in windows)
  rounds = sum(w["rounds"] for w in windows)
  predicted = sum(metrics.predicted_wall_s(w) for w in windows)
  ar_s = sum(w["tokens"] * profile.t_step(None, metrics.window_attn_len(w, _NO_CAP))
             for w in windows)
  ar_round_s = sum(w["rounds"] * profile.t_step(None, metrics.window_attn_len(w, _NO_CAP))
                   for w in windows)
  return dict(tokens_per_round=tokens / rounds,
              forwards_per_round=sum(w["draft_forwards"] for w in windows) / rounds,
              profile_ratio=ar_s / predicted,
              time_over_profile=sum(w["measured_s"] for w in windows) / predicted,
              needed_tokens_per_round=target * predicted / ar_round_s)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("one or more results.jsonl")
  profile = LatencyProfile.load(_PROFILE.value)
  print(f"profile {profile.model} on {profile.device}, {profile.dtype}; target {_TARGET.value}x")
  records = [(rec, drafting_windows(rec)) for path in argv[1:] for rec in read_records(path)
             if rec["method"] == "knapspec"]
  print("| prompt | draft (attention + MLP, gamma) | bucket | alpha estimated | accepted / "
        "drafted | draft forwards per round | measured x AR (paired) | predicted x AR at its "
        f"gamma | best gamma, predicted | acceptance for {_TARGET.value}x |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for rec, mine in records:
    if not mine:
      print(f"| {rec['item_id']} | no drafting window | | | | | | | | |")
      continue
    skip = SkipMask.from_list(mine[0]["decision"]["skip"])
    gamma = mine[0]["decision"]["gamma"]
    attn_len = collections.Counter(metrics.window_attn_len(w, _NO_CAP)
                                   for w in mine).most_common(1)[0][0]
    measured = sum(w["accepted"] for w in mine) / sum(w["drafted"] for w in mine)
    estimated = mine[0]["decision"]["alpha"]
    per_round = sum(w["draft_forwards"] for w in mine) / sum(w["rounds"] for w in mine)
    paired = rec.get("paired_speedup") or rec.get("speedup")
    head = (f"| {rec['item_id']} | {len(skip.attn_skipped)} + {len(skip.mlp_skipped)}, "
            f"{gamma} | {attn_len} | {estimated:.2f} | {measured:.3f} | {per_round:.2f} | "
            f"{paired:.3f} |")
    if per_round < 0.9 * gamma:
      print(f"{head} the exit ended drafts early: not predicted | | |")
      continue
    top, top_gamma = best(profile, skip, measured, attn_len, _GAMMA_MAX.value)
    needed = next((a for a in ALPHA_GRID
                   if best(profile, skip, a, attn_len, _GAMMA_MAX.value)[0] >= _TARGET.value),
                  None)
    print(f"{head} {ratio(profile, skip, measured, attn_len, gamma):.3f} | {top_gamma}, "
          f"{top:.3f} | {'unreachable' if needed is None else f'{needed:.3f}'} |")

  print()
  print("The rounds as they ran (every window of that draft, at its own bucket):")
  print(f"| prompt | tokens per round | draft forwards per round | profile x AR for these rounds "
        f"| windows' time over the profile's | measured x AR (paired) | tokens per round for "
        f"{_TARGET.value}x |")
  print("|---|---|---|---|---|---|---|")
  for rec, mine in records:
    if mine:
      r = rounds_as_run(profile, mine, _TARGET.value)
      paired = rec.get("paired_speedup") or rec.get("speedup")
      print(f"| {rec['item_id']} | {r['tokens_per_round']:.2f} | {r['forwards_per_round']:.2f} "
            f"| {r['profile_ratio']:.3f} | {r['time_over_profile']:.3f} | {paired:.3f} "
            f"| {r['needed_tokens_per_round']:.2f} |")


if __name__ == "__main__":
  app.run(main)
