"""The round model under the confidence exit (selection.ExitRates, round_tokens, round_drafts)
against an exact enumeration of the draft policy speculative._draft and _round run: drafting
stops after the first token under the threshold (that token is still proposed) or after gamma
tokens, and the verifier accepts the longest agreeing prefix of what was drafted."""

import itertools

import numpy as np
import pytest

from knapspec_jax import selection
from knapspec_jax.skip_mask import SkipMask


def enumerate_round(p_agree_conf, p_agree_unconf, p_disagree_conf, gamma):
  """Expected (tokens, drafts) of one round, each drafted token's (agrees, confident) drawn
  independently with the given probabilities, by walking every outcome sequence."""
  outcomes = [((True, True), p_agree_conf), ((True, False), p_agree_unconf),
              ((False, True), p_disagree_conf),
              ((False, False), 1 - p_agree_conf - p_agree_unconf - p_disagree_conf)]
  tokens = drafts = 0.0
  for seq in itertools.product(outcomes, repeat=gamma):
    prob = np.prod([p for _, p in seq])
    drafted = 0
    for (_, confident), _ in seq:  # the draft loop: propose, stop after an unconfident token
      drafted += 1
      if not confident:
        break
    accepted = 0
    for (agrees, _), _ in seq[:drafted]:  # the verifier: the longest agreeing prefix
      if not agrees:
        break
      accepted += 1
    tokens += prob * (accepted + 1)
    drafts += prob * drafted
  return tokens, drafts


@pytest.mark.parametrize("a,c,q", [(0.9, 0.8, 0.75), (0.6, 0.5, 0.4), (0.85, 1.0, 0.85),
                                   (0.3, 0.9, 0.25)])
@pytest.mark.parametrize("gamma", [1, 2, 4, 6])
def test_round_formulas_match_the_enumerated_policy(a, c, q, gamma):
  rates = selection.ExitRates(agree=a, confident=c, confident_agree=q)
  tokens, drafts = enumerate_round(q, a - q, c - q, gamma)
  assert selection.round_tokens(rates, gamma) == pytest.approx(tokens, rel=1e-12)
  assert selection.round_drafts(rates, gamma) == pytest.approx(drafts, rel=1e-12)


def test_no_exit_is_the_closed_form():
  """A threshold of 0 never exits: the round is the paper's, expected_tokens over gamma drafts."""
  agree = [True] * 11 + [False] * 5
  rates = selection.exit_rates(agree, np.linspace(0.05, 0.99, 16), threshold=0.0)
  alpha = selection.smoothed_alpha(11 / 16, 16)
  assert (rates.confident, rates.agree, rates.confident_agree) == (1.0, alpha, alpha)
  for g in (1, 3, 10):
    assert selection.round_tokens(rates, g) == pytest.approx(selection.expected_tokens(alpha, g))
    assert selection.round_drafts(rates, g) == g


def test_exit_rates_count_and_smooth():
  agree = [True, True, False, True, False, True, True, True]
  prob = [0.9, 0.5, 0.95, 0.8, 0.3, 0.71, 0.69, 0.99]
  rates = selection.exit_rates(agree, prob, threshold=0.7)
  # confident: 0.9, 0.95, 0.8, 0.71, 0.99 (5 of 8); agreeing and confident: 0.9, 0.8, 0.71, 0.99
  assert rates.confident == pytest.approx((5 + 1) / 10)
  assert rates.confident_agree == pytest.approx((4 + 1) / 10)
  assert rates.agree == pytest.approx((6 + 1) / 10)
  with pytest.raises(ValueError, match="one agreement bit and one probability"):
    selection.exit_rates(agree, prob[:-1], 0.7)
  with pytest.raises(ValueError, match="one agreement bit and one probability"):
    selection.exit_rates([], [], 0.7)


class FlatProfile:
  """t_step and t_verify of a made-up machine: a draft costs 0.6 of a step, a verify of T
  tokens 1 + 0.02 (T - 1) steps (only what tpt_table and select read)."""

  def t_step(self, skip, attn_len):
    return 1e-3 if skip is None or not skip.n_skipped else 0.6e-3

  def t_verify(self, tokens, attn_len):
    return 1e-3 * (1 + 0.02 * (tokens - 1))


def test_tpt_table_uses_the_exit_round():
  skip = SkipMask.from_layers(4, attn=[1])
  rates = selection.ExitRates(agree=0.7, confident=0.6, confident_agree=0.55)
  table = selection.tpt_table([selection.Candidate(skip, 0.7, exit=rates)], FlatProfile(), 256, 6)
  for g in range(1, 7):
    want = selection.round_tokens(rates, g) / (selection.round_drafts(rates, g) * 0.6e-3
                                               + 1e-3 * (1 + 0.02 * g))
    assert table[0, g - 1] == pytest.approx(want)
  closed = selection.tpt_table([selection.Candidate(skip, 0.7)], FlatProfile(), 256, 6)
  assert not np.allclose(table, closed)
