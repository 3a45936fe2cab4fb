"""draft_skip="runtime": one compiled program reads any skip set from the decode state, so a new
skip set costs no compile; the drafts it runs are the static masks' drafts, and every output is
transformers' greedy output (the reference), whichever skip set drafts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import api, decoding
from knapspec_jax import model as model_lib
from knapspec_jax.kv_cache import KVCache
from test_speculative import KEEP_TEST, PAYS, synthetic_profile


def _runtime_copy(model):
  """The model with draft_skip="runtime" and its own empty compile cache and records."""
  return model.fresh(cfg=dataclasses.replace(model.cfg, draft_skip="runtime"),
                     profile=synthetic_profile(model.cfg.n_layers, **PAYS))


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_gated_forward_equals_the_static_mask(tiny_models, name):
  """A one-token draft step with the skip set as data (model.forward's gate) gives the static
  mask's logits and writes the same keys and values in every layer the mask keeps."""
  model = tiny_models[name].jax
  cfg, params, n = model.cfg, model.params, model.cfg.n_layers
  rng = np.random.default_rng(7)
  prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(1, 12)), jnp.int32)
  cache = KVCache.create(cfg, jnp.float32)
  attn_len = 256
  cache = model_lib.forward(params, cfg, prompt, cache, skip=ks.SkipMask.none(n),
                            attn_len=attn_len).cache
  token = jnp.asarray([[5]], jnp.int32)
  gated_step = jax.jit(lambda gate: model_lib.forward(  # one compile for every skip set
      params, cfg, token, cache, skip=ks.SkipMask.none(n), attn_len=attn_len, gate=gate))
  for skip in (ks.SkipMask.none(n), ks.SkipMask.from_layers(n, attn=[0], mlp=[n - 1]),
               ks.SkipMask(tuple(rng.random(2 * n) < 0.5)), ks.SkipMask((True,) * (2 * n))):
    static = model_lib.forward(params, cfg, token, cache, skip=skip, attn_len=attn_len)
    gated = gated_step(jnp.asarray(skip.skip))
    np.testing.assert_allclose(np.asarray(model_lib.lm_head(params, cfg, gated.hidden)),
                               np.asarray(model_lib.lm_head(params, cfg, static.hidden)),
                               rtol=1e-5, atol=1e-5, err_msg=str(skip))
    pos = 12
    for i in range(n):
      if not skip.skips_attn(i):
        np.testing.assert_allclose(np.asarray(gated.cache.k[i][:, pos]),
                                   np.asarray(static.cache.k[i][:, pos]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(gated.cache.v[i][:, pos]),
                                   np.asarray(static.cache.v[i][:, pos]), rtol=1e-5, atol=1e-5)
    assert int(gated.cache.length) == pos + 1


def test_new_skip_sets_compile_nothing_and_stay_lossless(tiny_models, hf_greedy,
                                                         compile_counter):
  """Under draft_skip="runtime", the fixed method with three different skip sets: the first
  compiles its programs, the next two compile nothing at all (XLA's own compile counter), and
  each output is transformers' greedy output."""
  tiny = tiny_models["qwen2"]
  model = _runtime_copy(tiny.jax)
  n = model.cfg.n_layers
  ids = np.arange(3, 33) % model.cfg.vocab_size
  want = hf_greedy(tiny.hf, ids, 24)
  masks = [ks.SkipMask.from_layers(n, attn=[1]), ks.SkipMask.from_layers(n, mlp=[0, 1]),
           ks.SkipMask.from_layers(n, attn=[0, n - 1], mlp=[n - 1])]
  counts = []
  for skip in masks:
    before = compile_counter.count
    got = api.generate(model, ids, 24, method="fixed", ignore_eos=True,
                       config=ks.FixedConfig(skip=skip, gamma=3, threshold=1e-4))
    counts.append(compile_counter.count - before)
    assert got.output_ids == want, skip
    assert got.stats["speculation_steps"] > 0
  assert counts[0] > 0 and counts[1:] == [0, 0], counts


def test_knapspec_under_runtime_skip_equals_ar(tiny_models, hf_greedy):
  """KnapSpec's searched skip sets, drafted through the gated program: transformers' output."""
  tiny = tiny_models["llama3_rope"]
  model = _runtime_copy(tiny.jax)
  ids = np.arange(5, 45) % model.cfg.vocab_size
  got = api.generate(model, ids, 32, method="knapspec", ignore_eos=True,
                     config=ks.KnapSpecConfig(**KEEP_TEST))
  assert got.output_ids == hf_greedy(tiny.hf, ids, 32)
  assert got.stats["speculation_steps"] > 0


def test_with_skip_sets_the_state_flags(tiny_models):
  model = tiny_models["llama"].jax
  n = model.cfg.n_layers
  cache = KVCache.create(model.cfg, jnp.float32)
  state = decoding.init_state(cache, jnp.zeros((model.cfg.vocab_size,), jnp.float32), 4, ())
  assert not np.asarray(state.skip).any() and state.skip.shape == (2 * n,)
  skip = ks.SkipMask.from_layers(n, attn=[1], mlp=[0])
  assert np.asarray(decoding.with_skip(state, skip).skip).tolist() == list(skip.skip)
  with pytest.raises(ValueError, match="skip mask of"):
    decoding.with_skip(state, ks.SkipMask.none(n + 1))


def test_draft_skip_option_is_checked_and_names_the_profile(tiny_models):
  path = str(tiny_models["llama"].path)
  with pytest.raises(ks.UnsupportedModelError, match="draft_skip must be one of"):
    api.load_model(path, use_cache=False, draft_skip="dynamic")
  with pytest.raises(ks.UnsupportedModelError, match="draft_skip must be one of"):
    dataclasses.replace(tiny_models["llama"].jax.cfg, draft_skip="")
  model = api.load_model(path, use_cache=False, draft_skip="runtime")
  assert model.cfg.draft_skip == "runtime"
  assert model.profile_name.endswith("+runtime_skip")
  assert tiny_models["llama"].jax.profile_name != model.profile_name


def test_profile_of_a_gated_model_times_the_conds(tiny_models):
  """latency.measure under draft_skip="runtime": the gated program with nothing skipped is timed
  against AR's step, its excess stored as draft_gate_s and charged to every draft step (t_step
  with a skip set), never to AR's (t_step(None)); the gated samples enter the fit without it."""
  from knapspec_jax import latency
  model = _runtime_copy(tiny_models["llama"].jax)
  lines = []
  profile = latency.measure(model.params, model.cfg, jnp.float32, model.profile_name,
                            attn_lens=(256,), windows=(1, 4), steps=4, repeats=1,
                            log=lines.append)
  assert any("per draft step over AR's" in line for line in lines), lines
  n = model.cfg.n_layers
  draft = ks.SkipMask.from_layers(n, attn=[1])
  fitted = dataclasses.replace(profile, draft_gate_s=0.0)
  assert profile.t_step(None, 256) == fitted.t_step(None, 256)
  assert profile.t_step(draft, 256) == pytest.approx(fitted.t_step(draft, 256)
                                                     + profile.draft_gate_s)
  assert profile.draft_gate_s != 0.0  # measured (either sign: on a CPU the conds are noise)
