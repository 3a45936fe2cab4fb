"""Stage 2 of KnapSpec: pick the (skip set, draft length) pair that maximizes tokens per time.

For a draft S with acceptance rate a and draft length g, one speculation round yields
E(a, g) = (1 - a^(g+1)) / (1 - a) tokens (g + 1 when a = 1) and costs g draft steps plus one
verify forward of g + 1 positions, so

  TPT(S, g) = E(a_S, g) / (g * t_step(S, n) + t_verify(g + 1, n)).

With the draft's confidence exit (speculative._draft: a token whose top-1 probability is under
the threshold is still proposed, then drafting stops) a round is shorter than g drafts, and the
drafts it does make are the confident ones. Where the search measured, token by token, whether a
candidate agrees with the full model and whether it is confident (`ExitRates`), the round is
modelled with those three rates instead (`round_tokens`, `round_drafts`): a = P(agree),
c = P(confident), q = P(agree and confident), each tokens drafted independently,

  tokens per round = 1 + a (1 - q^g) / (1 - q)      (token k is accepted if 1..k agree, and it
                                                     was drafted if 1..k-1 were confident)
  drafts per round = (1 - c^g) / (1 - c)
  TPT(S, g) = tokens per round / (drafts per round * t_step(S, n) + t_verify(g + 1, n)),

which is the formula above when every token is confident (c = 1, q = a). Measured on the H200
(Qwen2.5-Coder-1.5B, a 2K document, 1024 new tokens; BENCHMARKS.md 10.15): CLaSp's draft, 8
whole layers skipped at gamma 4 under the exit, drafted 3.0 tokens per round and yielded 3.73,
1.11x AR's tokens/s over its rounds, where KnapSpec, scoring its candidates without the exit,
had predicted no draft saving more than 0-2% and decoded plainly.

Plain AR decoding yields 1 / t_step(full, n). The choice is made against that: when no draft is
predicted to beat AR (by a margin, and by enough to pay for compiling a new program), KnapSpec
declines and decodes plainly. That decision is what keeps it from losing to AR on models and
machines where layer skipping cannot pay.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from knapspec_jax.latency import LatencyProfile
from knapspec_jax.skip_mask import SkipMask


def expected_tokens(alpha, gamma):
  """Tokens one round yields: accepted drafts plus the correction/bonus token."""
  alpha = np.asarray(alpha, np.float64)
  gamma = np.asarray(gamma, np.float64)
  safe = np.where(alpha >= 1.0, 0.5, alpha)
  return np.where(alpha >= 1.0, gamma + 1, (1 - safe ** (gamma + 1)) / (1 - safe))


def smoothed_alpha(agree: float, n_tokens: int) -> float:
  """Acceptance estimate from top-1 agreement on n reference tokens, with add-one smoothing.

  The candidates were chosen on those same tokens, so the raw agreement is optimistic, and a
  raw 1.0 would predict that every draft is accepted; (k + 1) / (n + 2) is neither.
  """
  return (agree * n_tokens + 1.0) / (n_tokens + 2.0)


@dataclasses.dataclass(frozen=True)
class ExitRates:
  """A draft's rates on the reference tokens under the confidence exit (module docstring), each
  with smoothed_alpha's add-one smoothing: agree a = P(top-1 agrees with the full model),
  confident c = P(top-1 probability >= threshold), confident_agree q = P(both)."""

  agree: float
  confident: float
  confident_agree: float

  @classmethod
  def no_exit(cls, alpha: float) -> "ExitRates":
    """A draft that never exits (every token confident, c = 1, q = a): its round is the
    paper's, gamma drafts accepted at rate alpha."""
    return cls(alpha, 1.0, alpha)


def exit_rates(agree: Sequence[bool], top1_prob: Sequence[float],
               threshold: float) -> ExitRates:
  """ExitRates from per-token agreement and top-1 probabilities (knapsack.Candidate). A
  threshold of 0 or less never exits: c = 1 and q = a, the closed form's round."""
  agree = np.asarray(agree, bool)
  confident = np.asarray(top1_prob, np.float64) >= threshold
  if agree.shape != confident.shape or agree.ndim != 1 or not agree.size:
    raise ValueError(f"need one agreement bit and one probability per reference token, got "
                     f"{agree.shape} and {confident.shape}")
  n = agree.size
  a = smoothed_alpha(agree.mean(), n)
  if threshold <= 0:
    return ExitRates.no_exit(a)
  return ExitRates(a, smoothed_alpha(confident.mean(), n),
                   smoothed_alpha((agree & confident).mean(), n))


def _geometric(r, g):
  """1 + r + ... + r^(g-1), elementwise over gamma g."""
  r = float(r)
  g = np.asarray(g, np.float64)
  return g if r >= 1.0 else (1 - r ** g) / (1 - r)


def round_tokens(rates: ExitRates, gamma):
  """Tokens one round yields under the exit: 1 + a (1 + q + ... + q^(g-1))."""
  return 1.0 + rates.agree * _geometric(rates.confident_agree, gamma)


def round_drafts(rates: ExitRates, gamma):
  """Draft forwards one round makes under the exit: 1 + c + ... + c^(g-1)."""
  return _geometric(rates.confident, gamma)


@dataclasses.dataclass(frozen=True)
class Candidate:
  skip: SkipMask
  alpha: float  # acceptance estimate
  budget: int = -1  # knapsack budget the DP found it at (-1: not from the DP)
  cosine: float = float("nan")
  exit: ExitRates | None = None  # the round under the confidence exit; None: no exit modelled


@dataclasses.dataclass(frozen=True)
class Decision:
  """What to decode with until the next re-optimization. skip None means plain AR, for
  ar_tokens tokens (None: to the end) before the policy decides again; a drafting decision
  decodes `rounds` speculation rounds (None: the policy's interval) and ignores ar_tokens."""

  skip: SkipMask | None
  gamma: int
  alpha: float
  predicted_tpt: float  # tokens/s predicted for the choice
  ar_tpt: float  # tokens/s predicted for AR
  best_tpt: float  # best draft's predicted tokens/s, chosen or not
  context: int
  reason: str
  ar_tokens: int | None = None  # plain decoding: tokens before the next decision, None: all
  rounds: int | None = None  # drafting: rounds before the next decision, None: the interval
  # drafting, rounds None: the window runs to the end of the bucket it starts in, not interval
  # rounds (KnapSpecConfig.bucket_windows); `observe` judges it as a full window.
  to_bucket_end: bool = False
  exit: ExitRates | None = None  # the draft's rates under the exit it was predicted with
  # The search's best (skip set, gamma) by predicted TPT, chosen or not (None where no search
  # ran for this decision): what the knapsack picks at this context, whatever the policy then
  # decoded with (a draft borrowed from a shorter context, or AR for want of a compile).
  best_skip: SkipMask | None = None
  best_gamma: int = 0
  # drafting with the draft kept at a bucket below while this bucket's own waits for its
  # compile (KnapSpecPolicy.stand_in): `observe` records nothing of it at this bucket
  stand_in: bool = False

  @property
  def drafts(self) -> bool:
    return self.skip is not None

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    # what the window decoded is the window's record; the search's best is search_best below
    for key in ("ar_tokens", "rounds", "exit", "to_bucket_end", "best_skip", "best_gamma"):
      del d[key]
    if not self.stand_in:  # named only where it happened, as search_best
      del d["stand_in"]
    d["skip"] = None if self.skip is None else self.skip.to_list()
    d["n_attn_skipped"] = 0 if self.skip is None else len(self.skip.attn_skipped)
    d["n_mlp_skipped"] = 0 if self.skip is None else len(self.skip.mlp_skipped)
    if self.best_skip is not None:
      d["search_best"] = dict(skip=self.best_skip.to_list(), gamma=self.best_gamma,
                              n_attn_skipped=len(self.best_skip.attn_skipped),
                              n_mlp_skipped=len(self.best_skip.mlp_skipped))
    return d


def tpt_table(candidates: Sequence[Candidate], profile: LatencyProfile, attn_len: int,
              gamma_max: int) -> np.ndarray:
  """Predicted tokens/s [n_candidates, gamma_max] for gamma = 1..gamma_max."""
  gammas = np.arange(1, gamma_max + 1)
  verify = np.asarray([profile.t_verify(g + 1, attn_len) for g in gammas])
  rows = []
  for c in candidates:
    rates = ExitRates.no_exit(c.alpha) if c.exit is None else c.exit
    rows.append(round_tokens(rates, gammas)
                / (round_drafts(rates, gammas) * profile.t_step(c.skip, attn_len) + verify))
  return np.asarray(rows).reshape(len(candidates), gamma_max)


def draft_tpt(skip: SkipMask, alpha: float, profile: LatencyProfile, attn_len: int,
              gamma: int, exit: ExitRates | None = None) -> float:
  """Predicted tokens/s of drafting with `skip` at draft length gamma."""
  return float(tpt_table([Candidate(skip, alpha, exit=exit)], profile, attn_len, gamma)[0, -1])


def select(candidates: Sequence[Candidate], profile: LatencyProfile, attn_len: int,
           context: int, gamma_max: int = 10, margin: float = 0.03,
           compile_cost_s: float = 0.0, window_tokens: int = 0,
           is_compiled=lambda skip, gamma: True) -> Decision:
  """Best (skip, gamma) by predicted TPT, or AR when no draft beats it by `margin`.

  A draft whose program is not compiled yet must also repay compile_cost_s, where that is
  positive, within the next window_tokens tokens: window_tokens * (1/ar - 1/tpt) >
  compile_cost_s. (With no cost to repay, compiled or not makes no difference: before, a draft
  slower than AR that a negative margin admits was declined only when not compiled yet, so a
  test's outcome hung on what earlier tests had compiled.)
  """
  ar = 1.0 / profile.t_step(None, attn_len)
  if not candidates:
    return Decision(None, 0, 0.0, ar, ar, 0.0, context, "no candidate survived the search")
  table = tpt_table(candidates, profile, attn_len, gamma_max)
  best_i, best_g = np.unravel_index(np.argmax(table), table.shape)
  best = float(table[best_i, best_g])
  searched = dict(best_skip=candidates[best_i].skip, best_gamma=int(best_g) + 1)
  order = np.argsort(-table, axis=None)
  for flat in order:
    i, g = np.unravel_index(flat, table.shape)
    tpt = float(table[i, g])
    if tpt <= ar * (1 + margin):
      break
    c, gamma = candidates[i], int(g) + 1
    if compile_cost_s > 0 and not is_compiled(c.skip, gamma):
      saved = window_tokens * (1.0 / ar - 1.0 / tpt)
      if saved <= compile_cost_s:
        continue
    return Decision(c.skip, gamma, c.alpha, tpt, ar, best, context,
                    f"predicted {tpt / ar:.2f}x AR", exit=c.exit, **searched)
  c = candidates[best_i]
  why = (f"best draft ({len(c.skip.attn_skipped)} attn + {len(c.skip.mlp_skipped)} MLP skipped, "
         f"gamma {best_g + 1}, alpha {c.alpha:.2f}) predicts {best / ar:.2f}x AR")
  return Decision(None, 0, c.alpha, ar, ar, best, context, "declined: " + why, **searched)
