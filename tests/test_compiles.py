"""After warm-up, a generation's timed decode compiles only what the method reports.

The compile counter listens to XLA itself (conftest), so it also sees the small eager-op
compiles (`jnp.minimum` on two scalars...) that the project's own CompileCache cannot: each
costs 20-100 ms on its first call in a process, inside a timed decode (measured on the H100 as
a 0.82x "slowdown" of a method that decoded plainly). `jax.clear_caches()` makes every run here
a first call for such ops.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import (api, compile_cache, decoding, engine, knapsack, latency, methods,
                          speculative)
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask
from test_speculative import NEVER_PAYS, PAYS, synthetic_profile


def _decode_compiles(compile_counter, model, method, ids, max_new, **options):
  """Runs generate(warmup=True) and returns (result, XLA compiles seen during the decode)."""
  decode, warmup = api.method_functions(method)
  seen = {}

  def counted(*args, **kwargs):
    before = compile_counter.count
    try:
      return decode(*args, **kwargs)
    finally:
      seen["n"] = compile_counter.count - before

  api.register_method(method, counted, warmup)
  try:
    result = api.generate(model, ids, max_new, method=method, ignore_eos=True, **options)
  finally:
    api.register_method(method, decode, warmup)
  return result, seen["n"]


@pytest.mark.parametrize("method,costs,options", [
    ("ar", None, {}),
    ("knapspec", NEVER_PAYS, {}),  # declines: decodes plainly in windows
    ("knapspec", PAYS, dict(config=ks.KnapSpecConfig(search_budget=1.0, interval=4))),
    ("fixed", PAYS, dict(config=ks.FixedConfig(gamma=3))),
    # every forward at one width (bf16 agreement with AR at that width): other programs, which
    # the warm-up must compile too (session 44's H100 runs compiled them in the timed decode)
    ("ar", None, dict(width=4)),
    ("knapspec", NEVER_PAYS, dict(width=11)),
    ("knapspec", PAYS, dict(config=ks.KnapSpecConfig(search_budget=1.0, interval=4), width=11)),
    ("fixed", PAYS, dict(config=ks.FixedConfig(gamma=3), width=4)),
])
def test_decode_after_warmup_compiles_nothing(tiny_models, compile_counter, method, costs,
                                              options):
  base = tiny_models["llama"].jax
  model = base.fresh()
  if costs is not None:
    model.profile = synthetic_profile(model.cfg.n_layers, **costs)
  rng = np.random.default_rng(3)
  prompt = lambda: rng.integers(0, model.cfg.vocab_size, size=30)
  first, _ = _decode_compiles(compile_counter, model, method, prompt(), 40, **options)
  if method in ("ar", "fixed") or costs is NEVER_PAYS:  # nothing chosen at run time: all warm
    assert first.stats["compile_in_decode_s"] == 0.0

  jax.clear_caches()  # every eager op is new again; the AOT-compiled programs stay
  result, n = _decode_compiles(compile_counter, model, method, prompt(), 40, **options)
  assert result.new_tokens == 40
  assert n == 0, f"{method}: {n} XLA compiles inside the timed decode after warm-up: " \
                 f"{compile_counter.events[-n:]}"
  assert result.stats["compile_in_decode_s"] == 0.0
  # and the policy knows it: no draft this warm-up compiled is passed over as not compiled
  assert not any("not compiled" in d["reason"] for d in result.stats.get("decisions", [])), \
      result.stats["decisions"]


@pytest.mark.parametrize("method", ["del", "clasp"])
def test_runtime_chosen_sets_compile_only_what_they_report(tiny_models, compile_counter,
                                                           method):
  """DEL and CLaSp choose skip sets while decoding, so they may compile then; every such compile
  must be one the method accounts for (compile_in_decode_s), none hidden."""
  base = tiny_models["qwen2"].jax
  model = base.fresh()
  model.profile = synthetic_profile(model.cfg.n_layers, **PAYS)
  ids = np.random.default_rng(5).integers(0, model.cfg.vocab_size, size=30)
  jax.clear_caches()
  ours_before = model.compiled.stats.compiles
  options = dict(config=ks.ClaspConfig(n_skip=1)) if method == "clasp" else {}
  result, n = _decode_compiles(compile_counter, model, method, ids, 40, **options)
  reported = model.compiled.stats.compiles - ours_before
  assert result.new_tokens == 40
  assert n <= reported, f"{method}: {n} XLA compiles in decode, {reported} by the project"


def test_profile_then_ar_compiles_the_full_model_segment_once(tiny_models):
  """The latency profiler times the full model with AR's own program (decoding.ARSegmentStatics
  fills in the empty skip set it names), so an AR generation after a measurement compiles only
  its prefill: before the statics were one key, the profiler's full-model program was compiled
  a second time by the first generation."""
  base = tiny_models["llama"].jax
  model = base.fresh()
  cfg = model.cfg
  latency.measure(model.params, cfg, model.params["embed"].dtype, "tiny", attn_lens=(256,),
                  windows=(1,), steps=4, repeats=1, compiled=model.compiled, log=lambda *_: None)
  full = lambda: [p for p in model.compiled.programs()
                  if isinstance(p, decoding.ARSegmentStatics)
                  and p.skip == SkipMask.none(cfg.n_layers)]
  assert [p.attn_len for p in full()] == [256]
  before = model.compiled.stats.compiles
  ids = np.random.default_rng(7).integers(0, cfg.vocab_size, size=30)
  result = ks.generate(model, ids, 20, ignore_eos=True)  # every step in the 256 bucket
  assert result.new_tokens == 20
  assert len(full()) == 1
  assert model.compiled.stats.compiles - before == 1, "more than the prefill chunk compiled"



def test_decode_programs_run_once_at_compile_on_zeros_leaving_the_callers_state(tiny_models,
                                                                                 hf_greedy):
  """CompileCache primes each loop program (on the H200 a first call costs 20-56 ms more than
  later ones) on zero-filled copies of its donated state: the caller's state survives the
  compile, and the AR and speculation programs then decode it to transformers' greedy tokens."""
  tiny = tiny_models["llama"]
  model, cfg = tiny.jax, tiny.jax.cfg
  ids = np.random.default_rng(5).integers(0, cfg.vocab_size, size=20)
  compiled = CompileCache()

  def start():
    cache = KVCache.create(cfg, model.params["embed"].dtype)
    logits, cache = decoding.prefill(model.params, cfg, ids, cache, compiled)
    return decoding.init_state(cache, logits, 12, ())

  attn_len = decoding.attn_bucket(len(ids) + 16, KVCache.capacity_for(cfg))
  state = start()
  ar = compiled.get(decoding.ARSegmentStatics(cfg, attn_len), (model.params, state))
  assert compiled.stats.primed == 1
  assert not any(x.is_deleted() for x in jax.tree.leaves(state))
  out = ar(model.params, state)
  expected = hf_greedy(tiny.hf, ids, 12)
  assert np.asarray(out.out[:int(out.n_out)]).tolist() == expected

  state = start()
  args = (model.params, state, speculative.SpecCounters.zeros(), jax.numpy.asarray(99),
          jax.numpy.asarray(0.0))
  skip = SkipMask.from_layers(cfg.n_layers, attn=[1], mlp=[])
  spec = compiled.get(speculative.SpecSegmentStatics(cfg, skip, 3, attn_len), args)
  assert compiled.stats.primed == 2
  assert not any(x.is_deleted() for x in jax.tree.leaves(state))
  out, counters = spec(*args)
  assert int(counters.rounds) > 0
  assert np.asarray(out.out[:int(out.n_out)]).tolist() == expected


def test_discard_drops_one_program_or_a_kind_and_get_builds_it_again(tiny_models):
  """CompileCache.discard: a statics object drops that program (every shape it was compiled
  for), a statics class every program of that class; other programs stay, and `get` builds a
  dropped program again (a new executable) that computes what the first one did."""
  model = tiny_models["llama3_rope"].jax
  compiled = CompileCache()
  cache = KVCache.create(model.cfg)
  ids = np.arange(5, 25, dtype=np.int32)
  progs = [knapsack.SearchStatics.of(model.cfg, 256, max_weight=4),
           knapsack.SearchStatics.of(model.cfg, 512, max_weight=4),
           knapsack.ExitAgreementStatics(model.cfg, 256)]
  args = (model.params, cache, ids[-4:], np.int32(16), np.int32(1), np.int32(1))
  first = [compiled.get(p, args if i < 2 else args[:4]) for i, p in enumerate(progs)]
  want = jax.device_get(first[0](*args).skip_bits)
  assert compiled.discard(progs[0]) == 1
  assert set(compiled.programs()) == set(progs[1:])
  again = compiled.get(progs[0], args)
  assert again is not first[0]
  np.testing.assert_array_equal(jax.device_get(again(*args).skip_bits), want)
  assert compiled.discard(knapsack.SearchStatics) == 2
  assert compiled.programs() == [progs[2]]


def test_segment_graphs_ask_for_cuda_graphs_over_the_segments_loops_only(tiny_models):
  """ModelConfig.segment_graphs: the segment programs (and no others) ask XLA for command
  buffers over while loops and conditionals, on GPU compiles only; XLA accepts the option as
  written (it refuses an unknown command type by name); a non-bool is refused by load_model."""
  cfg = tiny_models["llama3_rope"].jax.cfg
  graphs_cfg = dataclasses.replace(cfg, segment_graphs=True)
  skip = SkipMask.from_layers(cfg.n_layers, attn=(1,), mlp=())
  plain = speculative.SpecSegmentStatics(cfg, skip, 2, 256)
  graphs = speculative.SpecSegmentStatics(graphs_cfg, skip, 2, 256)
  assert plain.compiler_options == () and plain != graphs
  option = dict(graphs.compiler_options)["xla_gpu_enable_command_buffer"].split(",")
  assert {"WHILE", "CONDITIONAL", "FUSION", "CUSTOM_CALL"} <= set(option)
  assert compile_cache.compiler_options(graphs) == {}  # a CPU run
  for other in (decoding.draft_program(graphs_cfg, 256, skip),
                latency.VerifyLoopStatics(graphs_cfg, 256)):
    assert compile_cache.compiler_options(other) == {}
    assert not dict(getattr(other, "compiler_options", ()))
  loop = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, y: y * 2, x)).lower(np.ones(3))
  loop.compile(compiler_options=dict(graphs.compiler_options))
  with pytest.raises(Exception, match="not a valid enum value"):
    loop.compile(compiler_options={"xla_gpu_enable_command_buffer": "WHILE,NO_SUCH_COMMAND"})
  with pytest.raises(ks.UnsupportedModelError, match="segment_graphs must be True or False"):
    ks.load_model(segment_graphs="yes")


def test_programs_compile_with_the_xla_options_their_statics_ask_for(tiny_models, monkeypatch):
  """A program class's compiler_options reach XLA's compile, and name the executable-store
  entry; options for GPUs (xla_gpu_*) are left out elsewhere. The search's programs ask for
  XLA's latency-hiding scheduler off on GPUs (BENCHMARKS.md 10.25) and compile here as before."""
  model = tiny_models["llama3_rope"].jax
  cache = KVCache.create(model.cfg)
  ids = np.arange(5, 25, dtype=np.int32)
  args = (model.params, cache, ids[-4:], np.int32(16))
  prog = knapsack.ExitAgreementStatics(model.cfg, 256)
  for statics in (prog, knapsack.SearchStatics.of(model.cfg, 256),
                  knapsack.MaskAgreementStatics(model.cfg, 256)):
    assert dict(type(statics).compiler_options) == {
        "xla_gpu_enable_latency_hiding_scheduler": False}
    assert compile_cache.compiler_options(statics) == {}  # a CPU run
  want = jax.device_get(CompileCache().get(prog, args)(*args))
  plain_key = compile_cache.store_key(prog, args)

  monkeypatch.setattr(knapsack.ExitAgreementStatics, "compiler_options",
                      (("xla_no_such_option", True), ("xla_gpu_enable_cublaslt", True)))
  assert compile_cache.compiler_options(prog) == {"xla_no_such_option": True}
  assert compile_cache.store_key(prog, args) != plain_key  # no stored entry of other options
  with pytest.raises(Exception, match="xla_no_such_option"):
    CompileCache().get(prog, args)

  monkeypatch.setattr(knapsack.ExitAgreementStatics, "compiler_options",
                      (("xla_backend_optimization_level", 1),))
  np.testing.assert_allclose(jax.device_get(CompileCache().get(prog, args)(*args)), want)


def test_a_policy_at_one_width_finds_the_drafts_its_warmup_compiled(tiny_models):
  """A verify width makes other segment programs (speculative.segment_program's width): the
  draft KnapSpec keeps at width 11, compiled by a warm-up at that width, is found compiled by a policy at that
  width (so it drafts with it, not with the draft below "until the next warm-up compiles it"),
  and not by a policy at the natural width, whose program nothing compiled."""
  base = tiny_models["llama3_rope"].jax
  model = base.fresh()
  n_prompt, gamma = 240, 3
  skip = SkipMask.from_layers(model.cfg.n_layers, [1], [2])
  capacity = KVCache.capacity_for(model.cfg)
  model.kept_drafts_at(11)[decoding.attn_bucket(n_prompt, capacity)] = methods.KeptDraft(
      skip, gamma, 0.9, n_prompt)  # kept at width 11 (drafts are kept per width)
  config = ks.KnapSpecConfig(search_budget=0.0, explore_budget=0.0)  # no search to compile
  wide = methods.KnapSpecPolicy(model, model.profile, config, width=11)
  wide.warmup(n_prompt, 8)
  state = engine.abstract_state(model)
  assert wide.segment_compiled(state, skip, gamma, n_prompt)
  natural = methods.KnapSpecPolicy(model, model.profile, config)
  assert not natural.segment_compiled(state, skip, gamma, n_prompt)
