"""Greedy AR decoding against transformers `generate`, steady-state compiles, and request errors."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from knapspec_jax import api, decoding
from knapspec_jax.decoding import PromptError
from knapspec_jax.kv_cache import KVCache

PROMPT_CATEGORIES = ("writing", "math", "translation")  # the spec_bench_prompts fixture's keys


# ----------------------------------------------------------------------------- greedy parity

@pytest.mark.parametrize("category", PROMPT_CATEGORIES)
def test_smollm2_greedy_matches_transformers_generate(smol_jax, smol_hf, spec_bench_prompts,
                                                     hf_greedy, category):
  assert sorted(spec_bench_prompts) == sorted(PROMPT_CATEGORIES)
  ids = api.encode_prompt(smol_jax, spec_bench_prompts[category])
  start = time.perf_counter()
  result = api.generate(smol_jax, ids, 64, ignore_eos=True)
  jax_s = time.perf_counter() - start
  start = time.perf_counter()
  ref = hf_greedy(smol_hf, ids, 64)
  hf_s = time.perf_counter() - start
  assert result.prompt_ids == ids.tolist()
  assert result.new_tokens == 64 and result.stop_reason == decoding.STOP_MAX_NEW
  first_diff = next((i for i, (a, b) in enumerate(zip(result.output_ids, ref)) if a != b), None)
  print(f"\n[greedy] SmolLM2 {category}: prompt {len(ids)} tokens, 64 new, first mismatch "
        f"{first_diff}; knapspec_jax {jax_s:.1f} s (compile {result.compile_s:.1f} s), "
        f"transformers {hf_s:.1f} s; {result.text[:50]!r}")
  assert result.output_ids == ref


def test_tiny_greedy_matches_transformers_generate(tiny, hf_greedy):
  cfg = tiny.jax.cfg
  rng = np.random.default_rng(7)
  # A short prompt, and one whose decode crosses the 256 -> 512 attention bucket.
  for n_prompt, n_new in ((7, 40), (230, 48)):
    ids = rng.integers(0, cfg.vocab_size, size=n_prompt)
    result = api.generate(tiny.jax, ids, n_new, ignore_eos=True)
    ref = hf_greedy(tiny.hf, ids, n_new)
    assert result.output_ids == ref, f"{tiny.name}: prompt {n_prompt}"
    assert len(set(ref)) > 10, "degenerate reference: a constant output would prove little"
    assert result.stats["compile_in_decode_s"] == 0.0, "warm-up missed a program decode needed"


def test_tiny_decode_stops_when_the_cache_is_full(tiny_models, hf_greedy):
  m = tiny_models["qwen2"]
  cfg = m.jax.cfg
  ids = np.random.default_rng(8).integers(0, cfg.vocab_size, size=cfg.max_seq_len - 12)
  result = api.generate(m.jax, ids, 64, ignore_eos=True)
  assert result.stop_reason == decoding.STOP_CACHE_FULL
  assert result.new_tokens == 13  # 12 free positions, plus the token predicted at the last one
  assert result.output_ids == hf_greedy(m.hf, ids, 13)


def test_tiny_decode_stops_at_eos(tiny_models, hf_greedy):
  m = tiny_models["llama3_rope"]
  ids = np.random.default_rng(9).integers(0, m.jax.cfg.vocab_size, size=20)
  ref = hf_greedy(m.hf, ids, 40)
  k = next(i for i in range(5, 40) if ref[i] not in ref[:i])  # first occurrence at index k
  model = dataclasses.replace(m.jax, eos_ids=(ref[k], 511))
  result = api.generate(model, ids, 40)
  assert result.output_ids == ref[:k + 1]
  assert result.stop_reason == decoding.STOP_EOS
  ignored = api.generate(model, ids, 40, ignore_eos=True)
  assert ignored.output_ids == ref and ignored.stop_reason == decoding.STOP_MAX_NEW


def test_prefill_with_context_not_a_multiple_of_the_chunk(tiny_builder, tmp_path, hf_logits,
                                                          hf_greedy):
  """A context length that is not a multiple of 512 (here 600): a 590-token prompt is padded to
  2 chunks of 512 = 1024 positions, more than the cache holds (KVCache.capacity_for: 768). The chunk written
  past the end must not be clamped back over earlier keys."""
  hf = tiny_builder("llama", seed=21)
  hf.config.max_position_embeddings = 600
  hf.save_pretrained(tmp_path, safe_serialization=True)
  model = api.load_model(str(tmp_path), use_cache=False)
  assert model.cfg.max_seq_len == 600
  ids = np.random.default_rng(10).integers(0, model.cfg.vocab_size, size=590)
  logits, _ = decoding.prefill(model.params, model.cfg, ids, KVCache.create(model.cfg),
                               model.compiled)
  err = float(np.abs(np.asarray(logits) - hf_logits(hf, ids)[-1]).max())
  assert err <= 1e-3, f"prefill logits off by {err:.3g} (cache positions overwritten)"
  assert api.generate(model, ids, 5, ignore_eos=True).output_ids == hf_greedy(hf, ids, 5)


# ---------------------------------------------------------------------- steady-state compiles

def test_tiny_steady_state_compiles_nothing(tiny_models, compile_counter):
  model = tiny_models["qwen3"].jax.fresh()  # its own compile cache: compiles are counted
  rng = np.random.default_rng(11)
  prompt = lambda n: rng.integers(0, model.cfg.vocab_size, size=n)

  before = compile_counter.count
  api.generate(model, prompt(45), 10, ignore_eos=True)  # warm-up: prefill chunk 64, bucket 256
  assert compile_counter.count > before, "the compile listener saw nothing: it is not wired"
  assert model.compiled.stats.compiles >= 2

  xla_before, ours_before, hits_before = (compile_counter.count, model.compiled.stats.compiles,
                                          model.compiled.stats.hits)
  runs = [api.generate(model, prompt(40), 20, ignore_eos=True),
          api.generate(model, prompt(50), 33, ignore_eos=True),
          api.generate(model, prompt(64), 33),
          api.generate(model, prompt(33), 20)]
  new_xla = compile_counter.count - xla_before
  assert new_xla == 0, f"{new_xla} XLA compiles in steady state: {compile_counter.events[-5:]}"
  assert model.compiled.stats.compiles == ours_before, "the project's counter disagrees"
  assert model.compiled.stats.hits > hits_before
  assert [r.new_tokens for r in runs[:2]] == [20, 33]
  assert all(r.compile_s == 0.0 and r.stats["compile_in_decode_s"] == 0.0 for r in runs)

  # A prompt of a new length bucket (chunk 128) must compile, and both counters must say so.
  api.generate(model, prompt(70), 5, ignore_eos=True)
  assert compile_counter.count > xla_before
  assert model.compiled.stats.compiles > ours_before


def test_smollm2_steady_state_compiles_nothing(smol_jax, spec_bench_prompts, compile_counter):
  ids = api.encode_prompt(smol_jax, spec_bench_prompts["math"])
  assert len(ids) >= 50
  api.generate(smol_jax, ids[:45], 4, ignore_eos=True)  # warm-up (may already be compiled)
  xla_before, ours_before = compile_counter.count, smol_jax.compiled.stats.compiles
  a = api.generate(smol_jax, ids[:40], 8, ignore_eos=True)
  b = api.generate(smol_jax, ids[:50], 13, ignore_eos=True)
  assert (a.new_tokens, b.new_tokens) == (8, 13)
  assert compile_counter.count == xla_before
  assert smol_jax.compiled.stats.compiles == ours_before


# ------------------------------------------------------------------------------ bad requests

def test_empty_prompt(smol_jax, tiny_models):
  with pytest.raises(PromptError, match=r"prompt is empty"):
    api.generate(smol_jax, "", 8)
  with pytest.raises(PromptError, match=r"prompt is empty"):
    api.generate(smol_jax, [], 8)
  with pytest.raises(PromptError, match=r"prompt is empty"):
    api.generate(tiny_models["llama"].jax, np.zeros((0,), np.int32), 8)


def test_prompt_longer_than_the_cache(smol_jax, tiny_models):
  tiny = tiny_models["llama"].jax
  for n in (512, 513, 2000):
    with pytest.raises(PromptError, match=rf"prompt has {n} tokens but the model's context is 512"):
      api.generate(tiny, np.ones(n, np.int32), 4)
  with pytest.raises(PromptError, match=r"prompt has 8192 tokens but the model's context is 8192"):
    api.generate(smol_jax, np.ones(8192, np.int32), 4)


@pytest.mark.parametrize("max_new", [0, -5])
def test_non_positive_max_new_tokens(tiny_models, max_new):
  with pytest.raises(PromptError, match=rf"max_new_tokens must be positive, got {max_new}"):
    api.generate(tiny_models["llama"].jax, [1, 2, 3], max_new)


def test_other_bad_requests(tiny_models):
  tiny = tiny_models["llama"].jax
  with pytest.raises(PromptError, match=r"must lie in \[0, 512\)"):
    api.generate(tiny, [1, 512], 4)
  with pytest.raises(PromptError, match=r"must lie in \[0, 512\)"):
    api.generate(tiny, [-1, 3], 4)
  with pytest.raises(PromptError, match=r"one sequence"):
    api.generate(tiny, np.ones((2, 3), np.int32), 4)
  with pytest.raises(ValueError, match=r"unknown method 'nope'"):
    api.generate(tiny, [1, 2], 4, method="nope")
  with pytest.raises(ValueError, match=r"has no tokenizer: pass token ids"):
    api.generate(tiny, "hello", 4)
  with pytest.raises(api.MethodError, match=r"method 'ar' takes no options"):
    api.generate(tiny, [1, 2], 4, gamma=3)
