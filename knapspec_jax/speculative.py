"""Self-speculative decoding rounds, run on device: draft with a skip mask, verify, accept.

One round: starting from the pending token x_n (its KV not yet computed), the draft (the same
model with `skip` sublayers removed) proposes up to `gamma` tokens, stopping early after a token
whose top-1 probability fell under the confidence threshold (that token is kept: the verifier
judges it, as in the official code) or after an EOS; the full model verifies
[x_n, d_1..d_g] in one forward of gamma + 1 positions; the longest prefix of drafts that equals
the full model's greedy tokens is accepted, plus the full model's next token. The accepted
tokens are exactly t_0..t_k, the full model's own greedy choices, so the output equals AR's.
The KV cache is rolled back by setting its cursor: entries past it are stale and masked.

A segment runs rounds in a `lax.while_loop` until done, a round budget is spent (time to
re-optimize the skip set), or the attention bucket is full; the host then takes over.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import compile_cache
from knapspec_jax import model as model_lib
from knapspec_jax import sampling as sampling_lib
from knapspec_jax.config import ModelConfig
from knapspec_jax.decoding import (DecodeState, attn_bucket, draft_token, priming_state,
                                   run_segments, with_skip)
from knapspec_jax.kv_cache import SLACK, KVCache
from knapspec_jax.skip_mask import SkipMask

MAX_GAMMA = SLACK - 2


@flax.struct.dataclass
class SpecCounters:
  """Per-run statistics kept on device (int32 scalars)."""

  rounds: jax.Array  # verify forwards
  drafted: jax.Array  # draft tokens proposed to the verifier, low-confidence last ones included
  accepted: jax.Array  # draft tokens accepted
  # Draft model forwards. Every forward's token goes to the verifier (the confidence exit keeps
  # its token), so this equals `drafted`; kept apart because the latency prediction
  # (metrics.predicted_window_s) is stated in forwards.
  draft_forwards: jax.Array

  @classmethod
  def zeros(cls) -> "SpecCounters":
    z = jnp.zeros((), jnp.int32)
    return cls(z, z, z, z)

  @classmethod
  def abstract(cls) -> "SpecCounters":
    """The counters' shapes, without tracing zeros() (jax.eval_shape traced it anew on every
    call: 1.7 ms of a 3.3 ms decision on the 2-vCPU CPU, experiments/decision_cost.py)."""
    z = jax.ShapeDtypeStruct((), jnp.int32)
    return cls(z, z, z, z)


class _Draft(NamedTuple):
  tokens: jax.Array  # int32 [gamma]
  n: jax.Array  # int32 [] drafts proposed (= draft forwards run: every forward's token is kept)
  cache: KVCache
  q: jax.Array  # float32 [gamma, V] the draft's filtered distributions (sampling; else [gamma, 0])
  key: jax.Array  # uint32 [2] the PRNG key after drafting


def _draft(params, cfg: ModelConfig, state: DecodeState, skip: SkipMask, gamma: int,
           attn_len: int, threshold, sampling: sampling_lib.Filter | None = None,
           gated: bool = False) -> _Draft:
  """Drafts up to gamma tokens after the pending token: the draft's argmax, or with sampling a
  sample of its filtered distribution q (kept for verification).

  Confidence exit (official knapspec_generator.py): a token whose top-1 probability is under
  `threshold` is still proposed, then drafting stops. Dropping it instead (this project's
  earlier rule) wasted the forward that made it: on Qwen2.5-Coder-1.5B (H200, fixed sets, gamma
  4) 91-100% of drafted tokens were accepted, yet only 1.1-1.3 were drafted per round and every
  round paid one forward whose token was thrown away (../shared/MEASURED.md). With sampling the
  token's q is recorded like any other, so speculative sampling stays exact: where to stop
  depends only on the draft's own distributions and tokens, never on the target's.

  The draft writes the KV of its kept attention sublayers; verification overwrites every one of
  those positions. gated: the skip set is state.skip, read at run time (model.forward's gate).
  Greedy drafts score the state's draft vocabulary where it has one (ModelConfig.draft_vocab),
  their confidence the top probability among those K; the verify scores all V.
  """
  n = state.cache.length

  def cond(c):
    k, _, _, _, stop, _, _ = c
    return (k < gamma) & ~stop

  def body(c):
    k, drafts, q, token, _, cache, key = c
    out = model_lib.step(params, cfg, token, cache.rollback(n + k), skip=skip,
                         attn_len=attn_len, gate=state.skip if gated else None)
    if sampling is None:  # over the draft's vocabulary where the state has one
      nxt, logits = draft_token(params, cfg, state, out.hidden[0, 0])
      confident = jnp.max(jax.nn.softmax(logits)) >= threshold
    else:
      dist = sampling_lib.probs(model_lib.lm_head(params, cfg, out.hidden[0, 0]), sampling)
      key, u = sampling_lib.uniforms(key, 1)
      nxt = sampling_lib.draw(dist, u[0])
      confident = jnp.max(dist) >= threshold
      q = q.at[k].set(dist)
    # Every proposal is kept; a low-confidence one or an EOS is the last of this draft.
    stop = ~confident | jnp.any(nxt == state.eos)
    return k + 1, drafts.at[k].set(nxt), q, nxt, stop, out.cache, key

  zero = jnp.zeros((), jnp.int32)
  q = jnp.zeros((gamma, cfg.vocab_size if sampling else 0), jnp.float32)
  init = (zero, jnp.zeros((gamma,), jnp.int32), q, state.token, jnp.zeros((), bool),
          state.cache, state.key)
  k, drafts, q, _, _, cache, key = jax.lax.while_loop(cond, body, init)
  return _Draft(drafts, k, cache, q, key)


def _round(params, cfg: ModelConfig, state: DecodeState, counters: SpecCounters,
           skip: SkipMask, gamma: int, attn_len: int, threshold,
           sampling: sampling_lib.Filter | None = None, width: int | None = None,
           gated: bool = False):
  n = state.cache.length
  d = _draft(params, cfg, state, skip, gamma, attn_len, threshold, sampling, gated)
  drafts, n_drafts, key = d.tokens, d.n, d.key
  window = jnp.concatenate([state.token[None], drafts])  # [gamma + 1]
  if width:  # padded to a fixed verify width (see spec_segment)
    window = jnp.concatenate([window, jnp.zeros((width - gamma - 1,), jnp.int32)])
  out = model_lib.forward(params, cfg, window[None], d.cache.rollback(n),
                          skip=SkipMask.none(cfg.n_layers), attn_len=attn_len)
  # [gamma + 1, V]; at a width, a product of `width` rows, as AR's at that width (lm_head)
  logits = model_lib.lm_head(params, cfg, out.hidden[0, :gamma + 1], min_rows=width or 1)
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
                          draft_forwards=counters.draft_forwards + n_drafts)
  return state, counters


def round_span(cfg: ModelConfig, gamma: int, width: int | None = None) -> int:
  """Positions from the cursor that one round writes: the verify window (width, else gamma +
  1), or the last draft step's padding rows (model.step) where those reach further."""
  return max(width or gamma + 1, gamma - 1 + cfg.step_rows)


def spec_segment(params, state: DecodeState, counters: SpecCounters, max_rounds, threshold, *,
                 cfg: ModelConfig, skip: SkipMask, gamma: int, attn_len: int,
                 sampling: sampling_lib.Filter | None = None, width: int | None = None,
                 gated: bool = False):
  """Runs up to max_rounds speculation rounds on device. attn_len bounds the context: a round
  needs positions up to n + gamma, so the segment stops once n + gamma + 1 > attn_len.
  sampling: None verifies greedily; a Filter runs speculative sampling (sampling.py).
  width: verify windows padded to this many positions (>= gamma + 1); with AR run at the same
  width (decoding.ar_segment) every full-model forward has one shape, so bf16 output equals
  that AR's exactly. None: gamma + 1, the fastest.
  gated: the draft's skip set is state.skip (ModelConfig.draft_skip == "runtime"), `skip` the
  sublayers removed at compile time on top of it."""
  if not 1 <= gamma <= MAX_GAMMA:
    raise ValueError(f"gamma must be in 1..{MAX_GAMMA}, got {gamma}")
  if not gamma + 1 <= (width or gamma + 1) <= SLACK:
    raise ValueError(f"the verify width must be in {gamma + 1}..{SLACK}, got {width}")
  span = round_span(cfg, gamma, width)

  def cond(c):
    s, _, r = c
    n = s.cache.length
    return ~s.done & (r < max_rounds) & (n + span <= attn_len) & (n < cfg.max_seq_len)

  def body(c):
    s, cnt, r = c
    s, cnt = _round(params, cfg, s, cnt, skip, gamma, attn_len, threshold, sampling, width,
                    gated)
    return s, cnt, r + 1

  state, counters, _ = jax.lax.while_loop(cond, body, (state, counters, jnp.zeros((), jnp.int32)))
  return state, counters


def segment_buckets(cfg: ModelConfig, capacity: int, gamma: int, start: int,
                    end: int, width: int | None = None) -> list[int]:
  """The attention buckets a segment (verify windows of `width`, see spec_segment) visits while
  the context grows from start to end."""
  end = min(end, cfg.max_seq_len)
  span = round_span(cfg, gamma, width)
  return sorted({attn_bucket(n + span, capacity) for n in range(start, max(end, start + 1))})


# XLA's default command types (its debug_options_flags.cc) and while loops and conditionals: the
# options of a segment program under ModelConfig.segment_graphs (GPU compiles only).
SEGMENT_GRAPH_OPTIONS = (("xla_gpu_enable_command_buffer",
                          "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,"
                          "CONDITIONAL"),)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class SpecSegmentStatics:
  """spec_segment's static settings (see it for each), defaults filled in: the key of one
  compiled segment program. Compiled with SEGMENT_GRAPH_OPTIONS where cfg.segment_graphs."""

  cfg: ModelConfig
  skip: SkipMask
  gamma: int
  attn_len: int
  sampling: sampling_lib.Filter | None = None
  width: int | None = None
  gated: bool = False
  donate_argnums = (1,)  # the decode state

  @property
  def compiler_options(self) -> tuple:
    return SEGMENT_GRAPH_OPTIONS if self.cfg.segment_graphs else ()

  def run(self, params, state, counters, max_rounds, threshold):
    return spec_segment(params, state, counters, max_rounds, threshold, cfg=self.cfg,
                        skip=self.skip, gamma=self.gamma, attn_len=self.attn_len,
                        sampling=self.sampling, width=self.width, gated=self.gated)

  def prime_args(self, args):
    """One round of gamma drafts (threshold 0) from the zero-filled state (compile_cache primes
    each program so)."""
    params, state, counters = args[:3]
    return (params, priming_state(state, self.gamma + 2), counters, jnp.ones((), jnp.int32),
            jnp.zeros((), jnp.float32))


def segment_program(cfg: ModelConfig, skip: SkipMask, gamma: int, attn_len: int,
                    sampling: sampling_lib.Filter | None = None,
                    width: int | None = None) -> SpecSegmentStatics:
  """The segment program that drafts with `skip`: its own (skip is static) or, under
  ModelConfig.draft_skip == "runtime", the one program of (gamma, bucket) that reads any skip set
  from the state (run it on decoding.with_skip(state, skip)): a new skip set compiles nothing."""
  if cfg.draft_skip == "runtime":
    return SpecSegmentStatics(cfg, SkipMask.none(cfg.n_layers), gamma, attn_len, sampling, width,
                              gated=True)
  return SpecSegmentStatics(cfg, skip, gamma, attn_len, sampling, width)


def segment_args(params, state: DecodeState) -> tuple:
  """A segment program's arguments (abstract where state is): params, state, counters, the
  round budget, the threshold."""
  return (params, state, SpecCounters.abstract(), jax.ShapeDtypeStruct((), jnp.int32),
          jax.ShapeDtypeStruct((), jnp.float32))


def compile_segments(params, cfg: ModelConfig, state: DecodeState, compiled, *, skip: SkipMask,
                     gamma: int, start: int, end: int,
                     sampling: sampling_lib.Filter | None = None,
                     width: int | None = None) -> None:
  """Ahead-of-time compiles the segment program of (skip, gamma) (verify windows of `width`)
  for each attention bucket it visits while the context grows from start to end
  (segment_buckets, at the same width); state may be abstract (jax.ShapeDtypeStruct leaves). A
  method whose skip set is known before decoding (e.g. a fixed set) compiles here, at warm-up,
  rather than inside its timed decode."""
  args = segment_args(params, state)
  for attn_len in segment_buckets(cfg, state.cache.capacity, gamma, start, end, width):
    compiled.get(segment_program(cfg, skip, gamma, attn_len, sampling, width), args)


def run_rounds(params, cfg: ModelConfig, state: DecodeState, counters: SpecCounters, compiled,
               *, skip: SkipMask, gamma: int, threshold: float, max_rounds: int,
               background: bool | str = False, prefetch: int = 256,
               sampling: sampling_lib.Filter | None = None, width: int | None = None,
               one_bucket: bool = False):
  """Up to max_rounds rounds (fewer at done / cache end), crossing buckets: decoding.run_segments
  with the segment program of (skip, gamma) and a budget of rounds read from the counters.
  one_bucket: stop where the context leaves the attention bucket of the first segment (one
  program call), even with rounds left.

  Returns (state, counters, ready). With background (True or "thread": a background thread;
  "process": the compile worker, then a load from the executable store) a program that is not
  compiled yet is compiled there and the call returns early with ready=False, so the caller
  can decode plainly meanwhile; the next bucket's program is requested `prefetch` positions
  before the context reaches it.
  """
  start_rounds = int(counters.rounds)
  if cfg.draft_skip == "runtime":
    state = with_skip(state, skip)

  def budget(rounds):  # the segment's arguments after (state, counters), None once spent
    left = max_rounds - (int(rounds) - start_rounds)
    if left <= 0:
      return None
    # Host scalars, which the program call transfers with its other arguments: made device
    # arrays here (jnp.asarray) they were two eager device operations per window, 2.9 ms a
    # window under cProfile on the H100 (BENCHMARKS.md 10.37).
    return np.int32(left), np.float32(threshold)

  (state, counters), ready = run_segments(
      compiled, params, (state, counters),
      lambda attn_len: segment_program(cfg, skip, gamma, attn_len, sampling, width),
      span=round_span(cfg, gamma, width), max_seq_len=cfg.max_seq_len,
      read=lambda carry: carry[1].rounds,
      args=budget, background=background, prefetch=prefetch,
      max_calls=1 if one_bucket else None)
  return state, counters, ready
