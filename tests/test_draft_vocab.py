"""A draft that scores part of the vocabulary (ModelConfig.draft_vocab): which tokens it scores
(against a NumPy restatement of the rule), that every method still gives AR's and transformers'
tokens, that a draft whose vocabulary holds none of AR's tokens is never accepted yet loses
nothing, what the profile makes of its cheaper head, and the requests it refuses."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import api, decoding, latency, speculative
from knapspec_jax.config import UnsupportedModelError
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.sampling import SamplingConfig, SamplingError
from test_speculative import DRAFTING_CONFIGS, PAYS, synthetic_profile

K = 128  # of the tiny models' 512 tokens


@pytest.fixture(scope="module")
def narrow(tiny_models) -> dict:
  """The tiny llama3_rope (untied head) and qwen3 (tied) models loaded with a draft vocabulary,
  with a cost structure where drafting pays (tests/test_speculative.py's with_profile: no AR
  speed measured on this CPU, whose plain windows would judge the drafts instead)."""
  models = {}
  for name in ("llama3_rope", "qwen3"):
    model = api.load_model(str(tiny_models[name].path), use_cache=False, draft_vocab=K)
    model.profile = synthetic_profile(model.cfg.n_layers, **PAYS)
    model.note_ar_speed = lambda *args, **kwargs: None
    models[name] = model
  return models


def test_the_vocabulary_is_the_end_tokens_then_the_prompts_by_count_then_the_lowest_ids(narrow):
  model = narrow["qwen3"]
  prompt = np.array([300, 7, 300, 9, 7, 300, 500, 2])
  eos = (511, 3)
  got = decoding.draft_vocabulary(model.params, model.cfg, prompt, eos)
  # by hand: 511, 3; then 300 (x3), 7 (x2), then 2, 9, 500 once each in id order; then 0, 1, 4...
  head = [511, 3, 300, 7, 2, 9, 500]
  want = head + [i for i in range(512) if i not in head][:K - len(head)]
  assert np.asarray(got.ids).tolist() == want
  embed = np.asarray(model.params["embed"])  # tied: the head is the embedding
  np.testing.assert_array_equal(np.asarray(got.head), embed[want])
  untied = narrow["llama3_rope"]
  got = decoding.draft_vocabulary(untied.params, untied.cfg, prompt, eos)
  np.testing.assert_array_equal(np.asarray(got.head),
                                np.asarray(untied.params["lm_head"])[:, want].T)
  whole = dataclasses.replace(model.cfg, draft_vocab=0)
  assert decoding.draft_vocabulary(model.params, whole, prompt, eos) is None


@pytest.mark.parametrize("name", ["llama3_rope", "qwen3"])
def test_every_method_with_a_draft_vocabulary_gives_ar_and_transformers_tokens(
    narrow, tiny_models, hf_greedy, name):
  full = tiny_models[name]
  model = narrow[name]
  ids = np.arange(5, 45) % model.cfg.vocab_size
  want = hf_greedy(full.hf, ids, 40)
  assert api.generate(full.jax, ids, 40, ignore_eos=True).output_ids == want
  for method, config in DRAFTING_CONFIGS.items():
    got = api.generate(model, ids, 40, method=method, ignore_eos=True, config=config)
    assert got.output_ids == want, (name, method)
    if method in ("knapspec", "fixed"):  # they drafted (DEL's rule may decline here)
      assert got.stats["speculation_steps"] > 0, (name, method)
    if method == "fixed":  # the warm-up compiled for the state that carries the vocabulary
      assert got.stats["compile_in_decode_s"] == 0.0, name


def test_a_draft_that_cannot_propose_ar_tokens_is_never_accepted_and_loses_nothing(narrow):
  """Rounds of a fixed draft (nothing skipped but one MLP) whose vocabulary holds none of AR's
  next 24 tokens: every draft is rejected, every round emits the verify's token, and the
  output is AR's."""
  model = narrow["qwen3"]
  cfg = model.cfg
  ids = np.arange(5, 45) % cfg.vocab_size
  want = api.generate(model, ids, 24, ignore_eos=True).output_ids
  outside = np.setdiff1d(np.arange(cfg.vocab_size), want)[:K].astype(np.int32)
  draft = decoding.DraftVocab(jnp.asarray(outside),
                              jnp.asarray(np.asarray(model.params["embed"])[outside]))
  cache = KVCache.create(cfg, jnp.float32)
  logits, cache = decoding.prefill(model.params, cfg, ids, cache, model.compiled)
  state = decoding.init_state(cache, logits, 24, (), draft=draft)
  skip = ks.SkipMask.from_layers(cfg.n_layers, mlp=[1])
  seg = jax.jit(lambda p, s, c: speculative.spec_segment(
      p, s, c, jnp.asarray(100), jnp.asarray(0.0), cfg=cfg, skip=skip, gamma=3, attn_len=256))
  state, counters = seg(model.params, state, speculative.SpecCounters.zeros())
  assert int(counters.drafted) == 3 * int(counters.rounds) > 0
  assert int(counters.accepted) == 0
  assert np.asarray(state.out)[:int(state.n_out)].tolist() == want


def test_the_profile_times_the_drafts_head_and_prices_every_draft_with_it(narrow):
  model = narrow["qwen3"]
  assert model.profile_name.endswith(f"+draftvocab{K}")
  p = latency.measure(model.params, model.cfg, jnp.float32, model.profile_name, attn_lens=(256,),
                      windows=(1, 4), steps=4, repeats=1, log=lambda s: None)
  assert np.isfinite(p.draft_head_s) and p.draft_head_s != 0.0
  n = model.cfg.n_layers
  sublayers = lambda n_attn: p.c0 + n_attn * p.t_attn(256) + n * p.t_mlp
  assert p.t_step(None, 256) == pytest.approx(sublayers(n))
  skip = ks.SkipMask.from_layers(n, attn=[1])
  assert p.t_step(skip, 256) == pytest.approx(sublayers(n - 1) - p.draft_head_s)
  profile = synthetic_profile(model.cfg.n_layers, **PAYS)
  assert profile.draft_head_s == 0.0  # profiles without it price drafts as before


def test_requests_it_cannot_serve_are_refused_before_any_work(narrow, tiny_models, tmp_path):
  path = str(tiny_models["qwen3"].path)
  for bad in (-1, 1.5, "64", True):
    with pytest.raises(UnsupportedModelError, match="draft_vocab must be an integer >= 0"):
      api.load_model(str(tmp_path / "missing.gguf"), draft_vocab=bad)
  with pytest.raises(UnsupportedModelError, match="static skip sets only"):
    api.load_model(str(tmp_path / "missing.gguf"), draft_vocab=8, draft_skip="runtime")
  with pytest.raises(UnsupportedModelError, match="below the vocabulary's 512"):
    api.load_model(path, use_cache=False, draft_vocab=512)
  with pytest.raises(SamplingError, match="greedy decoding only"):
    api.generate(narrow["qwen3"], [5, 6, 7], 4, method="fixed",
                 sampling=SamplingConfig(temperature=0.8, seed=0))
