"""Sampling: temperature / top-k / top-p filtering and the speculative accept-or-resample rule.

Greedy decoding (sampling=None everywhere) is the default and its programs do not change. With a
`SamplingConfig`, AR samples each token from the filtered target distribution p, and a
speculative round keeps that output distribution exactly (Leviathan et al. 2023, Chen et al.
2023): the draft samples d_i from its own filtered distribution q_i (the same filter), and

  accept d_i with probability min(1, p_i(d_i) / q_i(d_i)), in order; at the first rejection emit
  a token drawn from normalize(max(0, p_i - q_i)) and stop; if all drafts pass, emit a token
  drawn from p at the next position.

Each emitted token is then distributed as p given the tokens before it, whatever the draft.

The official KnapSpec code, when sampling, instead draws a target token t_i ~ p_i at every
verified position and accepts d_i while d_i == t_i (its greedy rule applied to samples). That
also keeps the distribution (every emitted token is a t_i), but accepts a draft with probability
sum_x p(x) q(x) instead of sum_x min(p(x), q(x)). Both rules are here (`rule`), so their
acceptance can be compared on the same drafts.

Every random choice is made from a uniform in [0, 1) by inverse CDF, so the rules are pure
functions of (p, q, drafts, uniforms) that tests can run on numpy inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from knapspec_jax.config import is_int, is_real


class SamplingError(ValueError):
  """A sampling setting out of range (temperature, top_k, top_p, rule)."""


class Filter(NamedTuple):
  """The static part of a SamplingConfig (no seed): hashable, a jit static argument."""

  temperature: float
  top_k: int
  top_p: float
  rule: str


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Sample instead of greedy decoding.

  temperature: logits are divided by it (> 0, finite; near 0 it tends to greedy, exactly).
  top_k: keep the k most likely tokens (ties at the k-th value kept); 0 keeps all (an int).
  top_p: keep the smallest set of most likely tokens whose probability reaches top_p (nucleus),
    always at least one; 1.0 keeps all.
  seed: the PRNG seed of the run, 0..2**32 - 1 (jax keeps 32 bits of it without x64), or an
    integer scalar jax array (e.g. traced under vmap over seeds); an array in the decode
    state: new seeds compile nothing.
  rule: how a speculative round verifies drafts: "speculative" (min(1, p/q) and residual
    resampling) or "exact_match" (the official code's: a target sample must equal the draft).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  rule: str = "speculative"

  def __post_init__(self):
    if not is_real(self.temperature) or not 0.0 < self.temperature < math.inf:
      raise SamplingError(f"temperature must be a finite number > 0 (use sampling=None for "
                          f"greedy), got {self.temperature!r}")
    if not is_int(self.top_k) or self.top_k < 0:
      raise SamplingError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
    if not is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
      raise SamplingError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
    if isinstance(self.seed, jax.Array):  # traced or device seeds (vmap over seeds): no range
      if self.seed.shape != () or not jnp.issubdtype(self.seed.dtype, jnp.integer):
        raise SamplingError(f"seed must be an integer scalar, got an array of shape "
                            f"{self.seed.shape} and dtype {self.seed.dtype}")
    elif not is_int(self.seed) or not 0 <= self.seed < 2**32:
      raise SamplingError(f"seed must be an integer in 0..2**32 - 1, got {self.seed!r}")
    if not isinstance(self.rule, str) or self.rule not in RULES:
      raise SamplingError(f"unknown acceptance rule {self.rule!r}; known: {sorted(RULES)}")

  @property
  def filter(self) -> Filter:
    return Filter(float(self.temperature), int(self.top_k), float(self.top_p), self.rule)

  def key(self) -> jax.Array:
    return jax.random.key_data(jax.random.key(self.seed))


def probs(logits, f: Filter):
  """Filtered probabilities [..., V] (float32) of logits [..., V]: temperature, then top-k,
  then top-p, as transformers' and the official code's warpers apply them.

  The logits are shifted by their maximum before the division, and the maxima set to 0 apart:
  a temperature however small (1e-38, or one that float32 flushes to zero) then gives the limit,
  all mass on the most likely tokens, instead of inf - inf = nan."""
  logits = logits.astype(jnp.float32)
  top = jnp.max(logits, axis=-1, keepdims=True)
  logits = jnp.where(logits == top, 0.0, (logits - top) / f.temperature)
  v = logits.shape[-1]
  if 0 < f.top_k < v:
    kth = jax.lax.top_k(logits, f.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  p = jax.nn.softmax(logits, axis=-1)
  if f.top_p < 1.0:
    sorted_p = -jnp.sort(-p, axis=-1)
    before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
    n_keep = jnp.sum(before < f.top_p, axis=-1, keepdims=True)  # >= 1: before[0] = 0
    cutoff = jnp.take_along_axis(sorted_p, n_keep - 1, axis=-1)
    p = jnp.where(p >= cutoff, p, 0.0)  # ties with the last kept token are kept too
    p = p / jnp.sum(p, axis=-1, keepdims=True)
  return p


def draw(dist, u):
  """The token that uniform u in [0, 1) picks from an unnormalized distribution dist [V] by
  inverse CDF; never a zero-probability token."""
  cdf = jnp.cumsum(dist)
  token = jnp.sum(cdf <= u * cdf[-1])
  last_positive = dist.shape[-1] - 1 - jnp.argmax(dist[::-1] > 0)
  return jnp.minimum(token, last_positive).astype(jnp.int32)


def uniforms(key_data, n: int):
  """(next key data, n uniforms in [0, 1)) from raw key data uint32 [2]."""
  key, sub = jax.random.split(jax.random.wrap_key_data(key_data))
  return jax.random.key_data(key), jax.random.uniform(sub, (n,))


class Verdict(NamedTuple):
  n_accepted: jax.Array  # int32 [] drafts accepted, a prefix
  token: jax.Array  # int32 [] the token emitted after them (resampled, or the bonus token)


def speculative_rule(p, q, drafts, n_drafts, u) -> Verdict:
  """Speculative sampling on one round.

  p [g + 1, V]: target probabilities at the verified positions; q [g, V]: the draft's, rows
  past n_drafts ignored; drafts [g] int32; n_drafts []; u [g + 1] uniforms (u[i] decides draft
  i, u[g] draws the emitted token).
  """
  p, q, drafts, u = (jnp.asarray(a) for a in (p, q, drafts, u))
  g = drafts.shape[0]
  idx = jnp.arange(g)
  p_d = jnp.take_along_axis(p[:g], drafts[:, None], axis=-1)[:, 0]
  q_d = jnp.take_along_axis(q, drafts[:, None], axis=-1)[:, 0]
  ok = (u[:g] * q_d < p_d) & (idx < n_drafts)  # u < p/q, q_d > 0 for a drawn draft
  k = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
  p_k = p[k]
  residual = jnp.maximum(p_k - q[jnp.minimum(k, g - 1)], 0.0)
  rejected = k < n_drafts
  dist = jnp.where(rejected & (jnp.sum(residual) > 0), residual, p_k)
  return Verdict(k.astype(jnp.int32), draw(dist, u[g]))


def exact_match_rule(p, q, drafts, n_drafts, u) -> Verdict:
  """The official code's rule: t_i ~ p_i at every position; accept d_i while d_i == t_i, then
  emit t at the first mismatch (or after the last draft)."""
  del q
  p, drafts, u = (jnp.asarray(a) for a in (p, drafts, u))
  g = drafts.shape[0]
  targets = jax.vmap(draw)(p, u)  # [g + 1]
  ok = (drafts == targets[:g]) & (jnp.arange(g) < n_drafts)
  k = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
  return Verdict(k.astype(jnp.int32), targets[k])


# Rules by name. Tests add deliberately broken ones here to check that the statistical test
# catches them.
RULES: dict[str, Callable[..., Verdict]] = {"speculative": speculative_rule,
                                            "exact_match": exact_match_rule}


def verify(f: Filter, p, q, drafts, n_drafts, u) -> Verdict:
  return RULES[f.rule](p, q, drafts, n_drafts, u)
