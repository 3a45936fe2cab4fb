"""Prefill and greedy autoregressive (AR) decoding: the baseline every speedup is measured against.

The decode loop runs on device (`lax.while_loop`), one program per attention-length bucket: the
host only steps in when the context crosses a bucket boundary, at EOS, or at max_new_tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import model as model_lib
from knapspec_jax import sampling as sampling_lib
from knapspec_jax import compile_cache, sharding
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig, is_int
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask

MAX_EOS = 4
STOP_EOS, STOP_MAX_NEW, STOP_CACHE_FULL = "eos", "max_new_tokens", "cache_full"


class PromptError(ValueError):
  """A prompt or generation request that cannot be served (empty, too long, bad budget)."""


def attn_bucket(n: int, capacity: int) -> int:
  """Static attention length covering n positions: 256, 512, 1024, then multiples of 1024."""
  for b in (256, 512, 1024):
    if n <= b:
      return min(b, capacity)
  return min(-(-n // 1024) * 1024, capacity)


def bucket_start(bucket: int) -> int:
  """The first context n that attn_bucket maps to `bucket` (a value it returned)."""
  if bucket > 1024:
    return -(-bucket // 1024) * 1024 - 1023
  return max((b for b in (256, 512) if b < bucket), default=0) + 1


def prefill_chunk_len(n: int, capacity: int) -> int:
  """Chunk size for prefilling an n-token prompt: a power of two from 32 up to 512, small
  enough that the padded prompt (whole chunks) still fits the cache."""
  c = 32
  while c < min(n, 512):
    c *= 2
  while c > 1 and -(-n // c) * c > capacity:
    c //= 2
  return c


def eos_array(eos_ids) -> jax.Array:
  ids = tuple(eos_ids)[:MAX_EOS]
  return jnp.asarray(ids + (-1,) * (MAX_EOS - len(ids)), jnp.int32)


@flax.struct.dataclass
class DecodeState:
  """Everything that changes during decoding, as arrays (so nothing recompiles)."""

  cache: KVCache
  token: jax.Array  # int32 [] the newest output token, not yet fed to the model
  out: jax.Array  # int32 [capacity] output tokens
  n_out: jax.Array  # int32 [] number of output tokens
  max_new: jax.Array  # int32 []
  eos: jax.Array  # int32 [MAX_EOS], -1 = unused slot
  done: jax.Array  # bool []
  key: jax.Array  # uint32 [2] PRNG key data (sampling only; greedy never reads it)
  # bool [2L] the draft's skip set as data, for programs that gate sublayers at run time
  # (ModelConfig.draft_skip == "runtime"; with_skip sets it); others never read it.
  skip: jax.Array
  # The draft's vocabulary (ModelConfig.draft_vocab = K; K = 0: the whole, and these are empty):
  # its token ids int32 [K] and their LM-head rows [K, D] (draft_vocabulary). Only drafts read it.
  draft_ids: jax.Array
  draft_head: jax.Array


class DraftVocab(NamedTuple):
  """A draft's vocabulary for one generation: ids int32 [K] and head rows [K, D]."""

  ids: jax.Array
  head: jax.Array


def draft_vocab_ids(prompt_ids, eos_ids, k: int, vocab_size: int) -> np.ndarray:
  """The k token ids a draft scores in a generation of this prompt: the model's end tokens,
  then the prompt's tokens, most frequent first (ties by id), then the lowest ids not taken yet
  (a BPE vocabulary lists its most common merges first). int32 [k]."""
  counts = np.bincount(np.asarray(prompt_ids, np.int64), minlength=vocab_size)
  by_count = np.argsort(-counts, kind="stable")[:np.count_nonzero(counts)]
  order = np.concatenate([np.asarray(tuple(eos_ids), np.int64), by_count, np.arange(vocab_size)])
  _, first = np.unique(order, return_index=True)
  return order[np.sort(first)][:k].astype(np.int32)


def draft_vocabulary(params, cfg: ModelConfig, prompt_ids, eos_ids) -> DraftVocab | None:
  """The draft's vocabulary of ModelConfig.draft_vocab tokens in a generation of this prompt
  (draft_vocab_ids) with their LM-head rows; None when drafts score every token. What a draft
  cannot propose, the verify still emits: the output is AR's either way."""
  if not cfg.draft_vocab:
    return None
  ids = jnp.asarray(draft_vocab_ids(prompt_ids, eos_ids, cfg.draft_vocab, cfg.vocab_size))
  return DraftVocab(ids, model_lib.head_rows(params, cfg, ids))


def prefill_chunk(params, tokens, cache, last_index, *, cfg, attn_len):
  """One chunk of the prompt; returns float32 logits at chunk position last_index and the cache."""
  out = model_lib.forward(params, cfg, tokens, cache, skip=SkipMask.none(cfg.n_layers),
                          attn_len=attn_len)
  h_last = jax.lax.dynamic_index_in_dim(out.hidden[0], last_index, axis=0, keepdims=False)
  return model_lib.lm_head(params, cfg, h_last), out.cache


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class PrefillStatics:
  """prefill_chunk's static settings: the program that runs one chunk of a prompt."""

  cfg: ModelConfig
  attn_len: int
  donate_argnums = (2,)  # the cache

  def run(self, params, tokens, cache, last_index):
    return prefill_chunk(params, tokens, cache, last_index, cfg=self.cfg, attn_len=self.attn_len)


def validate_request(cfg: ModelConfig, n_prompt: int, max_new_tokens: int):
  if n_prompt == 0:
    raise PromptError("the prompt is empty: give at least one token")
  if n_prompt >= cfg.max_seq_len:
    raise PromptError(
        f"the prompt has {n_prompt} tokens but the model's context is {cfg.max_seq_len}: "
        f"it must leave room for at least one new token (at most {cfg.max_seq_len - 1})")
  if not is_int(max_new_tokens):
    raise PromptError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
  if max_new_tokens <= 0:
    raise PromptError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if max_new_tokens >= 2**31:
    raise PromptError(f"max_new_tokens must be below 2**31 (an int32 on the device), got "
                      f"{max_new_tokens}")


def prefill(params, cfg: ModelConfig, prompt_ids: np.ndarray, cache: KVCache,
            compiled: CompileCache):
  """Runs the prompt through the full model in chunks; returns (last logits [V], cache)."""
  n = len(prompt_ids)
  chunk = prefill_chunk_len(n, cache.capacity)
  n_pad = -(-n // chunk) * chunk
  padded = np.zeros((1, n_pad), np.int32)
  padded[0, :n] = prompt_ids
  attn_len = attn_bucket(n_pad, cache.capacity)
  logits = None
  for start in range(0, n_pad, chunk):
    tokens = jnp.asarray(padded[:, start:start + chunk])
    last = jnp.asarray(min(n - 1 - start, chunk - 1), jnp.int32)
    args = (params, tokens, cache, last)
    logits, cache = compiled.get(PrefillStatics(cfg, attn_len), args)(*args)
  return logits, cache.rollback(n)


def init_state(cache: KVCache, first_logits, max_new_tokens: int, eos_ids,
               sampling: sampling_lib.SamplingConfig | None = None,
               draft: DraftVocab | None = None) -> DecodeState:
  """The state after the prompt: its first token from first_logits; draft: the draft's
  vocabulary (draft_vocabulary), None for the whole."""
  if draft is None:
    draft = DraftVocab(jnp.zeros((0,), jnp.int32), jnp.zeros((0, 0), jnp.float32))
  elif sampling is not None:
    raise sampling_lib.SamplingError("a draft vocabulary (draft_vocab) works with greedy "
                                     "decoding only: load the model without it to sample")
  key = sampling.key() if sampling else jnp.zeros((2,), jnp.uint32)
  first, key = next_token(first_logits, key, sampling and sampling.filter)
  eos = eos_array(eos_ids)
  out = jnp.zeros((cache.capacity,), jnp.int32).at[0].set(first)
  max_new = jnp.asarray(max_new_tokens, jnp.int32)
  done = jnp.any(first == eos) | (max_new <= 1)
  skip = jnp.zeros((2 * len(cache.k),), bool)
  return DecodeState(cache, first, out, jnp.ones((), jnp.int32), max_new, eos, done, key, skip,
                     draft.ids, draft.head)


def with_skip(state: DecodeState, skip: SkipMask) -> DecodeState:
  """The state carrying `skip` as its run-time skip set (DecodeState.skip), placed as the old
  one was (sharding.place_like); a host-to-device copy of 2L flags, no compile."""
  flags = np.asarray(skip.skip, bool)
  if flags.shape != state.skip.shape:
    raise ValueError(f"skip mask of {flags.size} items for a state of {state.skip.size}")
  return state.replace(skip=sharding.place_like(flags, state.skip))


def draft_token(params, cfg: ModelConfig, state: DecodeState, hidden):
  """(token, logits): a draft's greedy token from its final hidden state [D]: the argmax over
  the state's draft vocabulary where it has one (ModelConfig.draft_vocab), else over all;
  logits float32 [K] or [V], what its confidence is read from."""
  if state.draft_ids.shape[0]:
    logits = model_lib.lm_head(params, cfg, hidden, rows=state.draft_head)
    return state.draft_ids[jnp.argmax(logits)], logits
  logits = model_lib.lm_head(params, cfg, hidden)
  return jnp.argmax(logits).astype(jnp.int32), logits


def next_token(logits, key, sampling: sampling_lib.Filter | None):
  """(token, key): argmax of logits [V] when sampling is None, else a sample of the filtered
  distribution drawn with key (uint32 [2]), which is advanced."""
  if sampling is None:
    return jnp.argmax(logits).astype(jnp.int32), key
  key, u = sampling_lib.uniforms(key, 1)
  return sampling_lib.draw(sampling_lib.probs(logits, sampling), u[0]), key


def ar_segment(params, state: DecodeState, *, cfg: ModelConfig, attn_len: int,
               skip: SkipMask | None = None, width: int | None = None,
               sampling: sampling_lib.Filter | None = None, gated: bool = False,
               draft_head: bool = False) -> DecodeState:
  """Greedy one-token steps until EOS, max_new, the cache's end or the attention bucket's end.

  With a skip mask this is the draft model decoding on its own (the latency profile times it);
  gated: the skip set is state.skip, read at run time (model.forward's gate).
  width: each step is a forward over `width` positions (model.step: the token in row 0 and
  padding after it, the cursor advanced by one), and the LM head a product of `width` rows;
  None: ModelConfig.step_rows, the fastest. A verify's width gives AR the kernel shapes of a
  speculative verify of width tokens, so that in bfloat16 AR rounds like the verify does (see
  BENCHMARKS.md).
  sampling: sample each token from the filtered distribution instead of taking the argmax.
  draft_head: the argmax over the state's draft vocabulary (DecodeState.draft_ids), as a draft
  with ModelConfig.draft_vocab scores (the profile times drafts so); greedy only.
  """
  skip = skip or SkipMask.none(cfg.n_layers)
  if draft_head and sampling is not None:
    raise ValueError("draft_head decodes greedily: no sampling")
  width = width or cfg.step_rows
  limit = min(attn_len - width + 1, cfg.max_seq_len)

  def cond(s: DecodeState):
    return ~s.done & (s.cache.length < limit)

  def body(s: DecodeState):
    out = model_lib.step(params, cfg, s.token, s.cache, skip=skip, attn_len=attn_len,
                         rows=width, gate=s.skip if gated else None)
    if draft_head:
      nxt, key = draft_token(params, cfg, s, out.hidden[0, 0])[0], s.key
    else:  # the head over `width` rows, as a verify's at this width (speculative._round)
      logits = model_lib.lm_head(params, cfg, out.hidden[0, :1], min_rows=width)[0]
      nxt, key = next_token(logits, s.key, sampling)
    n_out = s.n_out + 1
    done = jnp.any(nxt == s.eos) | (n_out >= s.max_new)
    return s.replace(cache=out.cache, token=nxt,
                     out=s.out.at[s.n_out].set(nxt), n_out=n_out, done=done, key=key)

  return jax.lax.while_loop(cond, body, state)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class ARSegmentStatics:
  """ar_segment's static settings, every default filled in (skip: the full model), so that AR,
  the methods' plain windows and the latency profiler's full-model timing, which asks for the
  same program with an explicit empty skip set, share one compile."""

  cfg: ModelConfig
  attn_len: int
  skip: SkipMask | None = None  # None: SkipMask.none, filled in
  width: int | None = None  # None: cfg.step_rows, filled in
  sampling: sampling_lib.Filter | None = None
  gated: bool = False  # the draft's skip set is state.skip (draft_program)
  draft_head: bool = False  # the argmax over the state's draft vocabulary (draft_program)
  donate_argnums = (1,)  # the decode state

  def __post_init__(self):
    if self.skip is None:
      object.__setattr__(self, "skip", SkipMask.none(self.cfg.n_layers))
    if self.width is None:
      object.__setattr__(self, "width", self.cfg.step_rows)

  def run(self, params, state):
    return ar_segment(params, state, cfg=self.cfg, attn_len=self.attn_len, skip=self.skip,
                      width=self.width, sampling=self.sampling, gated=self.gated,
                      draft_head=self.draft_head)

  def prime_args(self, args):
    """One token from the zero-filled state (compile_cache primes each program so)."""
    params, state = args
    return params, priming_state(state, 1)


def draft_program(cfg: ModelConfig, attn_len: int, skip: SkipMask) -> ARSegmentStatics:
  """The draft model decoding on its own, as the speculation rounds run it (the latency
  profile times this): under ModelConfig.draft_skip == "runtime" a draft's program reads its skip
  set from the state (run it on with_skip(state, skip)); the full model is AR's own program."""
  if cfg.draft_skip == "runtime" and skip.n_skipped:
    return ARSegmentStatics(cfg, attn_len, gated=True)
  return ARSegmentStatics(cfg, attn_len, skip=skip,
                          draft_head=bool(cfg.draft_vocab and skip.n_skipped))


def priming_state(zeros: DecodeState, max_new: int) -> DecodeState:
  """A zero-filled decode state made to run: max_new tokens to go and no EOS (a zero-filled EOS
  slot would end it at token 0). The statics' prime_args run their program once on it."""
  return zeros.replace(max_new=jnp.full((), max_new, jnp.int32),
                       eos=jnp.full(zeros.eos.shape, -1, jnp.int32))


def stop_reason(state_done: bool, n_out: int, max_new: int, last_token: int, eos_ids) -> str:
  if n_out >= max_new:
    return STOP_MAX_NEW
  if state_done and last_token in tuple(eos_ids):
    return STOP_EOS
  return STOP_CACHE_FULL


def run_segments(compiled: CompileCache, params, carry: tuple, statics_at: Callable, *,
                 span: int, max_seq_len: int, read: Callable = lambda carry: None,
                 args: Callable = lambda value: (), background: bool | str = False,
                 prefetch: int = 256, max_calls: int | None = None) -> tuple[tuple, bool]:
  """The host loop of every decoding method: read the cursor, dispatch the segment program of
  the attention bucket it is in (the program decodes on device until its bucket, or its own
  stopping rule, ends it), repeat until done or the model's context is used up.

  carry: (DecodeState, *rest), what the program maps to its next value (AR: the state;
    speculation: the state and its counters).
  statics_at(attn_len): the program's statics at a bucket; span: positions one step needs
    beyond the cursor (1, AR's width, a verify's window), which pick the bucket.
  read(carry): a device value read with the cursor (speculation: the round counter), and
    args(value): the program's arguments after params and carry, or None to stop (a spent
    budget of rounds).
  background: a program not compiled yet compiles in the background (True or "thread": a
    thread of this process; "process": the compile worker, then loaded from the executable
    store; compile_cache.CompileCache.get_async) and the loop returns early with ready=False
    (the caller decodes plainly meanwhile); the next bucket's program is requested `prefetch`
    positions before the context reaches it.
  max_calls: return after this many program calls (1: at the end of the bucket the loop started
    in, or earlier by the program's own rule), None: until done or args stop.
  Returns (carry, ready).
  """
  mode = compile_cache.background_mode(background)
  calls = 0
  while True:
    state = carry[0]
    if max_calls is not None and calls >= max_calls:
      return carry, True
    # One device read per segment: the program decides everything else on device.
    done, length, value = jax.device_get((state.done, state.cache.length, read(carry)))
    if done or length >= max_seq_len:
      return carry, True
    extra = args(value)
    if extra is None:
      return carry, True
    attn_len = attn_bucket(int(length) + span, state.cache.capacity)
    call = (params,) + tuple(carry) + tuple(extra)
    if mode:
      fn = compiled.get_async(statics_at(attn_len), call, mode)
      if fn is None:
        return carry, False
      upcoming = attn_bucket(min(int(length) + span + prefetch, max_seq_len),
                             state.cache.capacity)
      if upcoming != attn_len:
        compiled.get_async(statics_at(upcoming), call, mode)
    else:
      fn = compiled.get(statics_at(attn_len), call)
    out = fn(*call)
    carry = out if isinstance(out, tuple) else (out,)
    calls += 1


def run_ar(params, cfg: ModelConfig, state: DecodeState, compiled: CompileCache,
           max_tokens: int | None = None, width: int | None = None,
           sampling: sampling_lib.Filter | None = None) -> DecodeState:
  """Decodes until done or the cache is full (or max_tokens more tokens), one device program
  per attention bucket (run_segments). width, sampling: see ar_segment (default: greedy steps
  ModelConfig.step_rows wide)."""
  width = width or cfg.step_rows
  # Host-side arithmetic on purpose: an eager jnp op here would compile on its first call, inside
  # a method's timed decode (measured: three such compiles cost 0.27 s on the H100).
  max_new = int(state.max_new)
  if max_tokens is not None:
    state = state.replace(max_new=jax.device_put(np.int32(min(max_new,
                                                              int(state.n_out) + max_tokens))))
  (state,), _ = run_segments(
      compiled, params, (state,),
      lambda attn_len: ARSegmentStatics(cfg, attn_len, width=width, sampling=sampling),
      span=width, max_seq_len=cfg.max_seq_len)
  if max_tokens is not None:  # the pause was not the end: recompute done under the real limit
    token, eos, n_out = jax.device_get((state.token, state.eos, state.n_out))
    done = bool(np.any(token == eos)) or int(n_out) >= max_new
    state = state.replace(max_new=jax.device_put(np.int32(max_new)),
                          done=jax.device_put(np.bool_(done)))
  return state


def ar_buckets(cfg: ModelConfig, capacity: int, n_prompt: int, max_new_tokens: int,
               width: int | None = None) -> list[int]:
  """The attention buckets an AR run over these lengths will visit (for warm-up compiles).

  The first new token comes from the prefill and the last one is never fed back, so the
  decode steps run at positions n_prompt .. n_prompt + max_new_tokens - 2."""
  width = width or cfg.step_rows
  last = min(n_prompt + max_new_tokens - 1, cfg.max_seq_len)
  return sorted({attn_bucket(n + width - 1, capacity) for n in range(n_prompt + 1, last + 1)})
