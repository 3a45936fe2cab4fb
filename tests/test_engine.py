"""The host loop and the compile cache driven by a stub model that emits known tokens.

In the manner of levanter's tests/inference/test_engine.py: the engine's logic (which program
runs at which attention bucket, when it compiles, where the cursor stops, what a spent budget
or a background compile does) is tested with a program that has no transformer in it, so a
failure here is the loop's and not the model's. The stub decodes as ar_segment does (one token a
step, until EOS, max_new, the model's context or the bucket's end), but its token after
position p is always (p + 1) % VOCAB: every output is known in advance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from knapspec_jax import compile_cache, decoding
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache

VOCAB = 1000
# A cache of one layer with one key/value head of width 2: the smallest the KVCache takes.
CFG = ModelConfig(arch="llama", vocab_size=VOCAB, d_model=2, d_ff=2, n_layers=1, n_heads=1,
                  n_kv_heads=1, head_dim=2, max_seq_len=2048)
PARAMS = {"unused": jnp.zeros((), jnp.float32)}  # the stub reads no weights


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class StubSegment:
  """ar_segment's contract without a model: known tokens up to the bucket's end."""

  attn_len: int
  max_seq_len: int
  donate_argnums = (1,)

  def run(self, params, state: decoding.DecodeState) -> decoding.DecodeState:
    del params
    limit = min(self.attn_len, self.max_seq_len)

    def body(s):
      n = s.cache.length
      nxt = ((n + 1) % VOCAB).astype(jnp.int32)
      n_out = s.n_out + 1
      return s.replace(cache=s.cache.rollback(n + 1), token=nxt, out=s.out.at[s.n_out].set(nxt),
                       n_out=n_out, done=jnp.any(nxt == s.eos) | (n_out >= s.max_new))

    return jax.lax.while_loop(lambda s: ~s.done & (s.cache.length < limit), body, state)


def start(n_prompt: int, max_new: int, eos_ids=(), cfg: ModelConfig = CFG):
  """The state after a prompt of n_prompt tokens: its first new token is the stub's own."""
  cache = KVCache.create(cfg).rollback(n_prompt)
  logits = jnp.zeros((VOCAB,), jnp.float32).at[n_prompt % VOCAB].set(1.0)
  return decoding.init_state(cache, logits, max_new, eos_ids)


def run(compiled, state, max_seq_len: int = CFG.max_seq_len, **kwargs):
  (state,), ready = decoding.run_segments(
      compiled, PARAMS, (state,), lambda attn_len: StubSegment(attn_len, max_seq_len), span=1,
      max_seq_len=max_seq_len, **kwargs)
  return state, ready


def outputs(state) -> list[int]:
  n_out, out = jax.device_get((state.n_out, state.out))
  return [int(t) for t in out[:int(n_out)]]


def test_one_program_per_bucket_and_none_the_second_time():
  compiled = CompileCache()
  state, ready = run(compiled, start(250, 400))
  assert ready and outputs(state) == [(250 + i) % VOCAB for i in range(400)]
  # The last token is never fed back: the cursor stops one short of the output count.
  assert int(state.cache.length) == 250 + 399 and bool(state.done)
  assert sorted(p.attn_len for p in compiled.programs()) == [256, 512, 1024]
  assert compiled.stats.compiles == 3

  hits = compiled.stats.hits
  again, _ = run(compiled, start(250, 400))
  assert outputs(again) == outputs(state)
  assert compiled.stats.compiles == 3 and compiled.stats.hits == hits + 3


def test_eos_stops_the_loop_where_the_token_appears():
  state, _ = run(CompileCache(), start(100, 500, eos_ids=(130,)))
  assert outputs(state)[-1] == 130 and len(outputs(state)) == 31
  assert decoding.stop_reason(bool(state.done), 31, 500, 130, (130,)) == decoding.STOP_EOS


def test_the_models_context_ends_the_loop_inside_a_bucket():
  """A context shorter than the bucket: the program stops at the context (not the bucket) and
  the loop does not dispatch again."""
  cfg = dataclasses.replace(CFG, max_seq_len=300)
  compiled = CompileCache()
  state, ready = run(compiled, start(200, 1000, cfg=cfg), max_seq_len=300)
  assert ready and int(state.cache.length) == 300 and not bool(state.done)
  assert [p.attn_len for p in compiled.programs()] == [256, 512]  # 300 lies in the 512 bucket
  assert decoding.stop_reason(False, len(outputs(state)), 1000, outputs(state)[-1], ()) == \
      decoding.STOP_CACHE_FULL


def test_a_spent_budget_stops_before_any_dispatch():
  """args(value) -> None (run_rounds: no rounds left) returns the carry untouched and compiles
  nothing; the value read with the cursor is the one `read` names."""
  compiled = CompileCache()
  state = start(40, 100)
  seen = []
  after, ready = run(compiled, state, read=lambda carry: carry[0].n_out,
                     args=lambda value: seen.append(int(value)))
  assert ready and after is state and seen == [1] and len(compiled) == 0


def test_background_compile_returns_early_then_runs():
  """A program not compiled yet: the loop returns at once, untouched, while it compiles in the
  background; once it is ready the loop runs it and asks for the next bucket's program ahead
  (prefetch), so nothing compiles in the caller's thread."""
  compiled = CompileCache()
  state = start(200, 10)
  first, ready = run(compiled, state, background=True)
  assert not ready and first is state  # nothing dispatched while its program compiles
  compiled.wait_background()
  assert compiled.stats.background_compiles == 1 and compiled.stats.compiles == 0
  done, ready = run(compiled, first, background=True)
  assert ready and outputs(done) == [(200 + i) % VOCAB for i in range(10)]
  compiled.wait_background()
  assert sorted(p.attn_len for p in compiled.programs()) == [256, 512]  # 512: prefetched
  assert compiled.stats.background_compiles == 2 and compiled.stats.compiles == 0


@pytest.mark.parametrize("n_prompt,max_new", [(1, 1), (255, 2), (511, 3)])
def test_bucket_edges(n_prompt, max_new):
  """At a bucket's last position the next step belongs to the next bucket; a budget of one
  token dispatches nothing (init_state's token is the only one)."""
  compiled = CompileCache()
  state, _ = run(compiled, start(n_prompt, max_new))
  assert outputs(state) == [(n_prompt + i) % VOCAB for i in range(max_new)]
  want = sorted({decoding.attn_bucket(n + 1, state.cache.capacity)
                 for n in range(n_prompt, n_prompt + max_new - 1)})
  assert sorted(p.attn_len for p in compiled.programs()) == want
