"""Why a draft did or did not pay: each drafting window of a benchmark's records against the
latency profile it was chosen with (issue 13's "show exactly why with measured numbers").

  python experiments/round_cost.py --results=results/h200_qwen/kept_drafts_rows2/results.jsonl.gz \
      --profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2__bfloat16.json

For every window that drafted, prints: the sublayers skipped and the draft length; the measured
seconds per speculation round against the profile's (draft forwards plus one verify); the
acceptance measured (accepted / drafted) against the search's estimate; tokens per round; the
AR time per token at that context (the AR run of the same prompt in the same records); and the
acceptance a draft of that length would need, at the measured round cost, to equal AR.
Then the Pearson correlation, over those windows, of the tokens/s each decision predicted
(profile and the search's acceptance estimate: KnapSpec's TPT) with the tokens/s measured
(the paper's analysis 1 reports 0.837), and of the profile's prediction from the window's own
counts (its predicted_s: measured acceptance) with the measured.

--results takes several files (comma-separated); --method=all reads every drafting method.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import selection  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402
import summarize  # noqa: E402

_RESULTS = flags.DEFINE_list("results", None, "Benchmark results.jsonl files.", required=True)
_PROFILE = flags.DEFINE_string("profile", None, "The latency profile JSON the run decided with.",
                               required=True)
_METHOD = flags.DEFINE_string("method", "knapspec", "Method whose windows to show (all: every "
                              "method's drafting windows).")


def needed_alpha(gamma: int, tokens_per_round: float) -> float:
  """The acceptance at which a round of `gamma` drafts yields `tokens_per_round` tokens
  (bisection on selection.expected_tokens, increasing in alpha); above gamma + 1: not
  reachable (returned as inf)."""
  if tokens_per_round > gamma + 1:
    return float("inf")
  low, high = 0.0, 1.0
  for _ in range(60):
    mid = (low + high) / 2
    if selection.expected_tokens(mid, gamma) < tokens_per_round:
      low = mid
    else:
      high = mid
  return high


def main(argv):
  del argv
  profile = LatencyProfile.load(_PROFILE.value)
  records, ar_ms = [], {}
  for path in _RESULTS.value:  # item ids are per file: a prompt's AR is its own file's
    these = [r | {"file": path} for r in summarize.read_records(path)]
    ar_ms |= {(path, r["item_id"]): 1e3 / r["tokens_per_s"] for r in these if r["method"] == "ar"}
    records += these
  predicted_tpt, window_tpt, measured_tpt, estimates = [], [], [], []
  print(f"profile {profile.model} on {profile.device}, {profile.dtype}")
  print(f"{'prompt':16s} {'ctx':>5s} {'attn':>4s} {'mlp':>3s} {'g':>2s} {'rounds':>6s} "
        f"{'ms/round':>8s} {'profile':>7s} {'acc':>5s} {'est':>5s} {'tok/rnd':>7s} "
        f"{'AR ms':>6s} {'x AR':>5s} {'alpha for 1.0x':>14s}")
  for r in records:
    if r["method"] in ("ar", "ar-rerun") or _METHOD.value not in ("all", r["method"]):
      continue
    for w in r["stats"]["window_log"]:
      d = w["decision"]
      if d["skip"] is None or w["rounds"] == 0:
        continue
      skip, gamma = SkipMask(tuple(d["skip"])), d["gamma"]
      attn_len = w["context"] + w["tokens"]
      per_round = w["measured_s"] / w["rounds"]
      predicted = (w["draft_forwards"] * profile.t_step(skip, attn_len)
                   + w["rounds"] * profile.t_verify(gamma + 1, attn_len)) / w["rounds"]
      tokens = w["tokens"] / w["rounds"]
      t_ar = ar_ms[(r["file"], r["item_id"])] / 1e3
      predicted_tpt.append(d["predicted_tpt"])
      estimates.append(d["alpha"])
      window_tpt.append(w["tokens"] / w["predicted_s"])
      measured_tpt.append(w["measured_tokens_per_s"])
      acc = w["accepted"] / w["drafted"] if w["drafted"] else float("nan")
      print(f"{r['item_id']:16s} {w['context']:5d} {d['n_attn_skipped']:4d} "
            f"{d['n_mlp_skipped']:3d} {gamma:2d} {w['rounds']:6d} {per_round * 1e3:8.2f} "
            f"{predicted * 1e3:7.2f} {acc:5.2f} {d['alpha']:5.2f} {tokens:7.2f} "
            f"{t_ar * 1e3:6.2f} {tokens * t_ar / per_round:5.2f} "
            f"{needed_alpha(gamma, per_round / t_ar):14.3f}")
  if len(measured_tpt) >= 3:
    estimated = [i for i, x in enumerate(estimates) if np.isfinite(x)]  # a fixed set has none
    r_decision = (np.corrcoef([predicted_tpt[i] for i in estimated],
                              [measured_tpt[i] for i in estimated])[0, 1]
                  if len(estimated) >= 3 else float("nan"))
    r_window = np.corrcoef(window_tpt, measured_tpt)[0, 1]
    print(f"Pearson r, predicted against measured tokens/s: the decisions' TPT (profile and "
          f"the search's acceptance estimate; {len(estimated)} windows that had one) "
          f"{r_decision:.3f}; the profile with each window's own acceptance "
          f"({len(measured_tpt)} windows) {r_window:.3f}")


if __name__ == "__main__":
  app.run(main)
