"""Run statistics: what a generation did, window by window, and how well the latency profile
predicted it (acceptance, tokens per verify step, time split, decisions, prediction error)."""

from __future__ import annotations

import jax
import numpy as np

from knapspec_jax.latency import LatencyProfile
from knapspec_jax.selection import Decision


def predicted_window_s(profile: LatencyProfile, decision: Decision, attn_len: int,
                       tokens: int, rounds: int, draft_forwards: int) -> float:
  """The profile's seconds for a window as it ran: its draft forwards (each one's token goes to
  the verifier, the low-confidence last one of a round included, so this is the drafted count)
  and one verify of gamma + 1 positions per round; a plain window, one full step per token."""
  if not decision.drafts:
    return tokens * profile.t_step(None, attn_len)
  return (draft_forwards * profile.t_step(decision.skip, attn_len)
          + rounds * profile.t_verify(decision.gamma + 1, attn_len))


def summarize(windows: list[dict], counters, search_s: float) -> dict:
  c = jax.device_get(counters)
  rounds, drafted, accepted = int(c.rounds), int(c.drafted), int(c.accepted)
  spec = [w for w in windows if w["decision"]["skip"] is not None]
  rel = [abs(w["predicted_s"] - w["measured_s"]) / w["measured_s"]
         for w in windows if w["measured_s"] > 0 and w["tokens"] > 0]
  return dict(
      speculation_steps=rounds, drafted_tokens=drafted, accepted_tokens=accepted,
      acceptance_rate=accepted / drafted if drafted else None,
      mean_accepted_per_step=(accepted + rounds) / rounds if rounds else None,
      search_s=search_s,
      draft_verify_s=sum(w["measured_s"] for w in spec),
      ar_s=sum(w["measured_s"] for w in windows if w["decision"]["skip"] is None),
      compile_in_windows_s=sum(w["compile_s"] for w in windows),
      drafting_windows=len(spec), windows=len(windows),
      profile_median_rel_err=float(np.median(rel)) if rel else None,
      decisions=[dict(context=w["context"], **{k: w["decision"][k] for k in (
          "n_attn_skipped", "n_mlp_skipped", "gamma", "alpha", "predicted_tpt", "ar_tpt",
          "best_tpt", "reason")}, measured_tokens_per_s=w["measured_tokens_per_s"])
                 for w in windows],
      window_log=windows)
