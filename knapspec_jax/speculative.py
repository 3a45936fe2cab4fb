"""Self-speculative decoding rounds, run on device: draft with a skip mask, verify, accept.

One round: starting from the pending token x_n (its KV not yet computed), the draft (the same
model with `skip` sublayers removed) proposes up to `gamma` tokens, stopping early when its top-1
probability falls under the confidence threshold or it proposes EOS; the full model verifies
[x_n, d_1..d_g] in one forward of gamma + 1 positions; the longest prefix of drafts that equals
the full model's greedy tokens is accepted, plus the full model's next token. The accepted
tokens are exactly t_0..t_k, the full model's own greedy choices, so the output equals AR's.
The KV cache is rolled back by setting its cursor: entries past it are stale and masked.

A segment runs rounds in a `lax.while_loop` until done, a round budget is spent (time to
re-optimize the skip set), or the attention bucket is full; the host then takes over.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from knapspec_jax import model as model_lib
from knapspec_jax import sampling as sampling_lib
from knapspec_jax.config import ModelConfig
from knapspec_jax.decoding import DecodeState
from knapspec_jax.kv_cache import SLACK, KVCache
from knapspec_jax.skip_mask import SkipMask

MAX_GAMMA = SLACK - 2


@flax.struct.dataclass
class SpecCounters:
  """Per-run statistics kept on device (int32 scalars)."""

  rounds: jax.Array  # verify forwards
  drafted: jax.Array  # draft tokens proposed
  accepted: jax.Array  # draft tokens accepted
  draft_forwards: jax.Array  # draft model forwards (one per proposed or rejected-low-confidence token)

  @classmethod
  def zeros(cls) -> "SpecCounters":
    z = jnp.zeros((), jnp.int32)
    return cls(z, z, z, z)


class _Draft(NamedTuple):
  tokens: jax.Array  # int32 [gamma]
  n: jax.Array  # int32 [] drafts proposed
  n_forwards: jax.Array  # int32 [] draft forwards run
  cache: KVCache
  q: jax.Array  # float32 [gamma, V] the draft's filtered distributions (sampling; else [gamma, 0])
  key: jax.Array  # uint32 [2] the PRNG key after drafting


def _draft(params, cfg: ModelConfig, state: DecodeState, skip: SkipMask, gamma: int,
           attn_len: int, threshold, sampling: sampling_lib.Filter | None = None) -> _Draft:
  """Drafts up to gamma tokens after the pending token: the draft's argmax, or with sampling a
  sample of its filtered distribution q (kept for verification).

  The draft writes the KV of its kept attention sublayers; verification overwrites every one of
  those positions.
  """
  n = state.cache.length

  def cond(c):
    n_fwd, k, _, _, _, stop, _, _ = c
    return (n_fwd < gamma) & ~stop

  def body(c):
    n_fwd, k, drafts, q, token, _, cache, key = c
    out = model_lib.forward(params, cfg, token[None, None], cache.rollback(n + k), skip=skip,
                            attn_len=attn_len)
    logits = model_lib.lm_head(params, cfg, out.hidden[0, -1])
    if sampling is None:
      nxt = jnp.argmax(logits).astype(jnp.int32)
      confident = jnp.max(jax.nn.softmax(logits)) >= threshold
    else:
      dist = sampling_lib.probs(logits, sampling)
      key, u = sampling_lib.uniforms(key, 1)
      nxt = sampling_lib.draw(dist, u[0])
      confident = jnp.max(dist) >= threshold
      q = jnp.where(confident, q.at[k].set(dist), q)
    # A low-confidence proposal is dropped and ends the draft; an EOS proposal is kept and ends it.
    drafts = jnp.where(confident, drafts.at[k].set(nxt), drafts)
    stop = ~confident | jnp.any(nxt == state.eos)
    return n_fwd + 1, k + confident.astype(jnp.int32), drafts, q, nxt, stop, out.cache, key

  zero = jnp.zeros((), jnp.int32)
  q = jnp.zeros((gamma, cfg.vocab_size if sampling else 0), jnp.float32)
  init = (zero, zero, jnp.zeros((gamma,), jnp.int32), q, state.token, jnp.zeros((), bool),
          state.cache, state.key)
  n_fwd, k, drafts, q, _, _, cache, key = jax.lax.while_loop(cond, body, init)
  return _Draft(drafts, k, n_fwd, cache, q, key)


def _round(params, cfg: ModelConfig, state: DecodeState, counters: SpecCounters,
           skip: SkipMask, gamma: int, attn_len: int, threshold,
           sampling: sampling_lib.Filter | None = None, width: int | None = None):
  n = state.cache.length
  d = _draft(params, cfg, state, skip, gamma, attn_len, threshold, sampling)
  drafts, n_drafts, n_forwards, key = d.tokens, d.n, d.n_forwards, d.key
  window = jnp.concatenate([state.token[None], drafts])  # [gamma + 1]
  if width:  # padded to a fixed verify width (see spec_segment)
    window = jnp.concatenate([window, jnp.zeros((width - gamma - 1,), jnp.int32)])
  out = model_lib.forward(params, cfg, window[None], d.cache.rollback(n),
                          skip=SkipMask.none(cfg.n_layers), attn_len=attn_len)
  logits = model_lib.lm_head(params, cfg, out.hidden[0, :gamma + 1])  # [gamma + 1, V]
  if sampling is None:
    target = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # Accept the longest prefix d_1..d_k with d_i == t_{i-1}; emit t_0..t_k.
    idx = jnp.arange(gamma)
    match = (drafts == target[:-1]) & (idx < n_drafts)
    n_accepted = jnp.sum(jnp.cumprod(match.astype(jnp.int32)))
  else:  # emit d_1..d_k, then the rule's token (sampling.py)
    key, u = sampling_lib.uniforms(key, gamma + 1)
    verdict = sampling_lib.verify(sampling, sampling_lib.probs(logits, sampling), d.q, drafts,
                                  n_drafts, u)
    n_accepted = verdict.n_accepted
    target = jnp.where(jnp.arange(gamma + 1) < n_accepted,
                       jnp.concatenate([drafts, drafts[:1]]), verdict.token)
  count = n_accepted + 1
  is_eos = jnp.any(target[:, None] == state.eos[None, :], axis=-1)
  first_eos = jnp.argmax(is_eos)
  count = jnp.where(is_eos[first_eos] & (first_eos < count), first_eos + 1, count)
  count = jnp.minimum(count, state.max_new - state.n_out)
  count = jnp.minimum(count, cfg.max_seq_len - n)
  new_out = jax.lax.dynamic_update_slice(state.out, target, (state.n_out,))
  last = target[count - 1]
  n_out = state.n_out + count
  done = jnp.any(last == state.eos) | (n_out >= state.max_new)
  state = state.replace(cache=out.cache.rollback(n + count), token=last, out=new_out,
                        n_out=n_out, done=done, key=key)
  counters = SpecCounters(rounds=counters.rounds + 1, drafted=counters.drafted + n_drafts,
                          accepted=counters.accepted + jnp.minimum(n_accepted, count - 1),
                          draft_forwards=counters.draft_forwards + n_forwards)
  return state, counters


def spec_segment(params, state: DecodeState, counters: SpecCounters, max_rounds, threshold, *,
                 cfg: ModelConfig, skip: SkipMask, gamma: int, attn_len: int,
                 sampling: sampling_lib.Filter | None = None, width: int | None = None):
  """Runs up to max_rounds speculation rounds on device. attn_len bounds the context: a round
  needs positions up to n + gamma, so the segment stops once n + gamma + 1 > attn_len.
  sampling: None verifies greedily; a Filter runs speculative sampling (sampling.py).
  width: verify windows padded to this many positions (>= gamma + 1); with AR run at the same
  width (decoding._ar_segment) every full-model forward has one shape, so bf16 output equals
  that AR's exactly. None: gamma + 1, the fastest."""
  if not 1 <= gamma <= MAX_GAMMA:
    raise ValueError(f"gamma must be in 1..{MAX_GAMMA}, got {gamma}")
  span = width or gamma + 1
  if not gamma + 1 <= span <= SLACK:
    raise ValueError(f"the verify width must be in {gamma + 1}..{SLACK}, got {width}")

  def cond(c):
    s, _, r = c
    n = s.cache.length
    return ~s.done & (r < max_rounds) & (n + span <= attn_len) & (n < cfg.max_seq_len)

  def body(c):
    s, cnt, r = c
    s, cnt = _round(params, cfg, s, cnt, skip, gamma, attn_len, threshold, sampling, width)
    return s, cnt, r + 1

  state, counters, _ = jax.lax.while_loop(cond, body, (state, counters, jnp.zeros((), jnp.int32)))
  return state, counters


def segment_args(params, state: DecodeState, counters: SpecCounters, max_rounds: int,
                 threshold: float):
  return (params, state, counters, jnp.asarray(max_rounds, jnp.int32),
          jnp.asarray(threshold, jnp.float32))


def segment_buckets(cfg: ModelConfig, capacity: int, gamma: int, start: int,
                    end: int) -> list[int]:
  """The attention buckets a segment visits while the context grows from start to end."""
  from knapspec_jax.decoding import attn_bucket
  end = min(end, cfg.max_seq_len)
  return sorted({attn_bucket(n + gamma + 1, capacity) for n in range(start, max(end, start + 1))})


def segment_static(cfg: ModelConfig, skip: SkipMask, gamma: int, attn_len: int,
                   sampling: sampling_lib.Filter | None = None,
                   width: int | None = None) -> dict:
  """spec_segment's static kwargs; defaults left out, so greedy keys don't change."""
  static = dict(cfg=cfg, skip=skip, gamma=gamma, attn_len=attn_len)
  if sampling is not None:
    static["sampling"] = sampling
  if width is not None:
    static["width"] = width
  return static


def compile_segments(params, cfg: ModelConfig, state: DecodeState, compiled, *, skip: SkipMask,
                     gamma: int, buckets, sampling: sampling_lib.Filter | None = None) -> None:
  """Ahead-of-time compiles the segment program of (skip, gamma) for each attention bucket;
  state may be abstract (jax.ShapeDtypeStruct leaves). A method whose skip set is known before
  decoding (e.g. a fixed set) compiles here, at warm-up, rather than inside its timed decode."""
  counters = jax.eval_shape(SpecCounters.zeros)
  args = (params, state, counters, jax.ShapeDtypeStruct((), jnp.int32),
          jax.ShapeDtypeStruct((), jnp.float32))
  for attn_len in buckets:
    compiled.get("spec_segment", spec_segment, args,
                 segment_static(cfg, skip, gamma, attn_len, sampling), donate_argnums=(1,))


def run_rounds(params, cfg: ModelConfig, state: DecodeState, counters: SpecCounters, compiled,
               *, skip: SkipMask, gamma: int, threshold: float, max_rounds: int,
               background: bool = False, prefetch: int = 256,
               sampling: sampling_lib.Filter | None = None, width: int | None = None):
  """Host driver: up to max_rounds rounds (fewer at done / cache end), crossing buckets.

  Returns (state, counters, ready). With background=True a program that is not compiled yet is
  compiled in a background thread and the call returns early with ready=False, so the caller
  can decode plainly meanwhile; the next bucket's program is requested `prefetch` positions
  before the context reaches it.
  """
  from knapspec_jax.decoding import attn_bucket
  start_rounds = int(counters.rounds)
  static = lambda attn_len: segment_static(cfg, skip, gamma, attn_len, sampling, width)
  span = width or gamma + 1
  while True:
    done, length, rounds = jax.device_get((state.done, state.cache.length, counters.rounds))
    left = max_rounds - (int(rounds) - start_rounds)
    if done or length >= cfg.max_seq_len or left <= 0:
      return state, counters, True
    attn_len = attn_bucket(int(length) + span, state.cache.capacity)
    args = segment_args(params, state, counters, left, threshold)
    if background:
      fn = compiled.get_async("spec_segment", spec_segment, args, static(attn_len),
                              donate_argnums=(1,))
      if fn is None:
        return state, counters, False
      upcoming = attn_bucket(min(int(length) + span + prefetch, cfg.max_seq_len),
                             state.cache.capacity)
      if upcoming != attn_len:
        compiled.get_async("spec_segment", spec_segment, args, static(upcoming),
                           donate_argnums=(1,))
    else:
      fn = compiled.get("spec_segment", spec_segment, args, static(attn_len), donate_argnums=(1,))
    state, counters = fn(*args)
