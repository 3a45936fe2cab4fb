"""The decoding loop shared by every speculative method: decide, decode a window, repeat.

A method is a `Policy`: at each re-optimization point it looks at the confirmed context and
returns a `Decision` (a skip set and draft length, or plain AR). The controller then decodes one
window with it on device (`speculative.run_rounds` or `decoding.run_ar`), measures it, and asks
again. Everything a run did is recorded per window, so a reader can see each decision, what it
predicted and what it got.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import jax
import numpy as np

from knapspec_jax import decoding, speculative
from knapspec_jax.metrics import predicted_window_s, summarize
from knapspec_jax.decoding import DecodeState, attn_bucket
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.selection import Decision


@dataclasses.dataclass(frozen=True)
class Context:
  """What a policy may look at when it decides."""

  tokens: np.ndarray  # int32 [n] the confirmed sequence (prompt + output) up to the cursor
  n_out: int  # tokens generated so far
  remaining: int  # tokens still allowed by max_new_tokens / the cache


class Policy(Protocol):
  name: str
  interval: int  # speculation rounds per window
  threshold: float  # draft confidence exit
  width: int | None  # the generation's forward width (run's width; None: natural): the
  #                    programs a policy compiles ahead or looks up are that width's

  def decide(self, model, state: DecodeState, ctx: Context) -> Decision:
    ...

  # Optional: observe(decision, window, capacity) is called after each window with its record
  # (what it decoded, measured_tokens_per_s, ...), for a policy that learns from measurements.


def confirmed_tokens(prompt_ids: np.ndarray, state: DecodeState) -> np.ndarray:
  """The tokens at cache positions [0, cursor): the prompt, then all outputs but the pending."""
  length, n_out, out = jax.device_get((state.cache.length, state.n_out, state.out))
  return _confirmed(prompt_ids, out, int(n_out), int(length))


def _confirmed(prompt_ids: np.ndarray, out: np.ndarray, n_out: int, length: int) -> np.ndarray:
  return np.concatenate([prompt_ids, out[:n_out]]).astype(np.int32)[:length]


_NO_ROUNDS = speculative.SpecCounters(*(np.int32(0),) * 4)  # a plain window's counter deltas


def _read(state: DecodeState, counters) -> tuple:
  """The host's one device read per window, after it: (done, cache length, n_out, max_new, out,
  counters). On a GPU each read waits for the device and costs tens of microseconds of host time
  at least (a declining KnapSpec's whole overhead over AR is such reads); this one serves both
  the window's record and the next decision."""
  return tuple(jax.device_get((state.done, state.cache.length, state.n_out, state.max_new,
                               state.out, counters)))


def background_compile_default() -> bool:
  """Off on every platform: decoding plainly while a skip set compiles in a background thread
  runs below AR's speed. Measured on the H100 (chunks of 16 tokens: about half of AR's speed) and
  again on the H200 with Qwen2.5-Coder-1.5B (plain windows of up to 64-token chunks: 92-485
  tok/s, four of six under 200, against AR's 518-590; a drafting window beside a prefetching
  compile 286 tok/s against a predicted 605; BENCHMARKS.md 10.6), probably because the compile's
  host work competes with the host loop that drives XLA's while loops on the GPU (not measured
  further). A new skip set therefore compiles in the caller's thread, at warm-up where possible
  (KnapSpec compiles its kept drafts there), and the selection charges a compile inside a run.
  background="process" (compile_cache.CompileWorker: another process compiles, this one loads in
  a background thread) kept AR within 0.2-2.2% of its speed on the H200 while the worker
  compiled and 3-6% during the load (BENCHMARKS.md 10.27); it is opt-in until measured in
  KnapSpec runs on a real model."""
  return False


def run(model, state: DecodeState, prompt_ids: np.ndarray, policy: Policy,
        profile: LatencyProfile, warmup_tokens: int = 0, background: bool | str | None = None,
        wait_chunk: int | None = None, sampling=None, width: int | None = None):
  """Decodes to the end with `policy`; returns (state, stats dict).

  background: compile a newly chosen skip set in the background (True or "thread": a thread;
  "process": the compile worker, loaded from the executable store when ready) and decode
  plainly, `wait_chunk` tokens at a time (default: the policy's interval), until it is ready
  (default: background_compile_default()).
  sampling: a sampling.Filter to sample (speculative sampling in drafting windows), None: greedy.
  width: every full-model forward (verify windows, plain steps) this many positions wide
  (bf16 output then equals AR's at the same width; speculative.spec_segment). None: natural.
  profile: the policy's, priced at that width (LatencyProfile.at_width; methods builds both
  from one), which prices each window's predicted seconds.
  """
  background = background_compile_default() if background is None else background
  wait_chunk = wait_chunk or policy.interval
  compiled = model.compiled
  counters = _NO_ROUNDS  # host zeros until the first drafting window (no device op before)
  windows = []
  search_s = 0.0
  if warmup_tokens:  # AR until the policy has generated tokens to look at
    state = decoding.run_ar(model.params, model.cfg, state, compiled, max_tokens=warmup_tokens,
                            sampling=sampling, width=width)
    jax.block_until_ready(state)  # (the loop's first read waits for it anyway)
  # The host's own time between windows, outside the decisions: the device idles through it. On
  # the H200 the records of 309 timed KnapSpec runs put it at 2.0 ms a window (BENCHMARKS.md
  # 10.35). Each window records the part after it (host_s; read_s of it is the device read).
  host_from = time.perf_counter()
  before_first = 0.0
  seen = _read(state, counters)
  while True:
    done, length, n_out, max_new, out, before = seen
    done, length, n_out, max_new = int(done), int(length), int(n_out), int(max_new)
    if done or length >= model.cfg.max_seq_len:
      break
    ctx = Context(_confirmed(prompt_ids, out, n_out, length), n_out,
                  min(max_new - n_out, model.cfg.max_seq_len - length))
    compile_before = compiled.stats.waited_s
    start = time.perf_counter()
    decision = policy.decide(model, state, ctx)
    deciding = time.perf_counter() - start  # with any compile the decision waited for
    search = deciding - (compiled.stats.waited_s - compile_before)
    search_s += search

    span = (speculative.round_span(model.cfg, decision.gamma, width) if decision.drafts
            else width or model.cfg.step_rows)
    attn_len = attn_bucket(length + span, state.cache.capacity)
    if decision.drafts and counters is _NO_ROUNDS:
      counters = speculative.SpecCounters.zeros()  # `before` holds the same zeros
    compile_before = compiled.stats.waited_s
    start = time.perf_counter()
    host = start - host_from - deciding  # since the last window (or the run's start)
    if windows:
      windows[-1]["host_s"] = host
    else:
      before_first = host
    waited_tokens, finished = 0, False
    if decision.drafts:
      start_rounds = int(before.rounds)
      # to the bucket's end: no round yields less than a token, so the bucket ends first
      budget = decision.rounds or (state.cache.capacity if decision.to_bucket_end
                                   else policy.interval)
      while True:
        left = budget - (int(counters.rounds) - start_rounds)
        state, counters, ready = speculative.run_rounds(
            model.params, model.cfg, state, counters, compiled, skip=decision.skip,
            gamma=decision.gamma, threshold=policy.threshold, max_rounds=left,
            background=background, sampling=sampling, width=width,
            one_bucket=decision.to_bucket_end)
        if ready or bool(state.done):
          break
        n_before = int(state.n_out)  # the draft's program is compiling: decode plainly
        state = decoding.run_ar(model.params, model.cfg, state, compiled, max_tokens=wait_chunk,
                                sampling=sampling, width=width)
        waited_tokens += int(state.n_out) - n_before
    else:  # plain decoding; to the end in one go (no pause to resume from) if the window allows
      plain = decision.ar_tokens
      limit = plain if plain is not None and plain < ctx.remaining else None
      finished = limit is None  # run_ar returns only when done or the cache is full
      state = decoding.run_ar(model.params, model.cfg, state, compiled, max_tokens=limit,
                              sampling=sampling, width=width)
    jax.block_until_ready(state)
    host_from = time.perf_counter()
    measured = host_from - start
    compile_s = compiled.stats.waited_s - compile_before  # compiled, or loaded from the store
    seen = _read(state, counters)  # also the next window's cursor and outputs
    read_s = time.perf_counter() - host_from  # the device read's share of the next host_s
    n_after, after = seen[2], seen[5]
    tokens = int(n_after) - n_out
    rounds = int(after.rounds - before.rounds)
    forwards = int(after.draft_forwards - before.draft_forwards)
    predicted = predicted_window_s(profile, decision, attn_len, tokens, rounds, forwards,
                                   waited_tokens)
    windows.append(dict(
        decision=decision.to_json(), context=length, tokens=tokens, rounds=rounds,
        drafted=int(after.drafted - before.drafted), ar_tokens_while_compiling=waited_tokens,
        accepted=int(after.accepted - before.accepted), draft_forwards=forwards,
        search_s=search, host_s=None, read_s=read_s, compile_s=compile_s,
        measured_s=measured - compile_s,
        predicted_s=predicted, predicted_wall_s=predicted + profile.call_s,
        measured_tokens_per_s=tokens / max(measured - compile_s, 1e-9)))
    if not decision.drafts and not waited_tokens and sampling is None:
      model.note_ar_speed(length, state.cache.capacity, tokens, measured - compile_s, width)
    if hasattr(policy, "observe"):  # what the window measured, for a policy that learns from it
      policy.observe(decision, windows[-1], state.cache.capacity)
    if finished:
      break
  if windows:  # the last window's host time runs to the end of the loop
    windows[-1]["host_s"] = time.perf_counter() - host_from
  stats = summarize(windows, counters, search_s)
  stats["host_s"] = before_first + sum(w["host_s"] for w in windows)
  return state, stats
