"""The forward pass against transformers on the same weights: logits, skipped sublayers, and
multi-token forwards against one-token-at-a-time decoding through the KV cache."""

from __future__ import annotations

import dataclasses

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from knapspec_jax import api
from knapspec_jax import model as model_lib
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask, SkipMaskError

LOGIT_TOL = 1e-3
STEP_TOL = 1e-4


@functools.partial(jax.jit, static_argnames=("cfg", "skip", "attn_len"))
def _forward_logits(params, tokens, cache, *, cfg, skip, attn_len):
  """float32 logits [T, V] of every position, and the advanced cache."""
  out = model_lib.forward(params, cfg, tokens, cache, skip=skip, attn_len=attn_len)
  return model_lib.lm_head(params, cfg, out.hidden[0]), out.cache


def jax_logits(model: api.Model, ids, skip: SkipMask | None = None, pad_to: int | None = None):
  """Logits [len(ids), V] from one forward over a fresh cache. Padding at the end leaves the
  earlier (causal) positions unchanged and lets prompts of different lengths share a compile."""
  n = len(ids)
  t = pad_to or n
  tokens = np.zeros((1, t), np.int32)
  tokens[0, :n] = ids
  skip = skip or SkipMask.none(model.cfg.n_layers)
  cache = KVCache.create(model.cfg)
  attn_len = min(max(256, -(-t // 256) * 256), cache.capacity)
  logits, _ = _forward_logits(model.params, jnp.asarray(tokens), cache, cfg=model.cfg, skip=skip,
                              attn_len=attn_len)
  return np.asarray(logits)[:n]


@contextlib.contextmanager
def hf_skipping(hf_model, skip: SkipMask):
  """Patches the transformers model so that each skipped `self_attn` / `mlp` contributes zero to
  the residual stream (the decoder layer adds its output to the residual): x -> x + 0."""
  zero_attn = lambda module, args, out: (torch.zeros_like(out[0]),) + tuple(out[1:])
  zero_mlp = lambda module, args, out: torch.zeros_like(out)
  handles = []
  layers = hf_model.model.layers
  assert len(layers) == skip.n_layers
  for i, layer in enumerate(layers):
    if skip.skips_attn(i):
      handles.append(layer.self_attn.register_forward_hook(zero_attn))
    if skip.skips_mlp(i):
      handles.append(layer.mlp.register_forward_hook(zero_mlp))
  try:
    yield
  finally:
    for h in handles:
      h.remove()


def random_masks(n_layers: int, count: int, seed: int) -> list[SkipMask]:
  """Seeded random masks with 25-60% of the sublayers skipped, never the empty mask."""
  rng = np.random.default_rng(seed)
  masks = []
  while len(masks) < count:
    bits = rng.random(2 * n_layers) < rng.uniform(0.25, 0.6)
    if bits.any() and not bits.all():
      masks.append(SkipMask(tuple(bool(b) for b in bits)))
  return masks


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------- full-model parity

def test_smollm2_logits_match_transformers(smol_jax, smol_hf, spec_bench_prompts, hf_logits):
  errs_last, errs_all = {}, {}
  for category, prompt in spec_bench_prompts.items():
    ids = api.encode_prompt(smol_jax, prompt)
    assert len(ids) <= 128
    got = jax_logits(smol_jax, ids, pad_to=128)
    ref = hf_logits(smol_hf, ids)
    assert got.shape == ref.shape == (len(ids), smol_jax.cfg.vocab_size)
    errs_last[category] = _max_err(got[-1], ref[-1])
    errs_all[category] = _max_err(got, ref)
    # Greedy parity downstream needs the same argmax, not just close values.
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
  print(f"\n[parity] SmolLM2-135M last-position max|dlogit| {max(errs_last.values()):.3g} "
        f"(all positions {max(errs_all.values()):.3g}) per prompt {errs_last}")
  assert max(errs_last.values()) <= LOGIT_TOL
  assert max(errs_all.values()) <= LOGIT_TOL


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_tiny_logits_match_transformers(tiny, hf_logits, fused):
  model = tiny.jax if fused else tiny.jax_unfused
  assert ("wqkv" in model.params["layers"][0]) == fused
  rng = np.random.default_rng(1)
  ids = rng.integers(0, model.cfg.vocab_size, size=200)
  got = jax_logits(model, ids)
  ref = hf_logits(tiny.hf, ids)
  err_last, err_all = _max_err(got[-1], ref[-1]), _max_err(got, ref)
  print(f"\n[parity] tiny {tiny.name} ({'fused' if fused else 'unfused'}): last-position "
        f"max|dlogit| {err_last:.3g} (all 200 positions {err_all:.3g}; "
        f"logit scale {np.abs(ref).max():.2f})")
  assert np.abs(ref).max() > 1.0, "the reference logits are too flat to tell anything apart"
  assert err_last <= LOGIT_TOL
  assert err_all <= LOGIT_TOL


def test_tiny_configs_are_what_the_tests_mean(tiny_models):
  """Guards the fixtures: each tiny model exercises the feature it stands for."""
  cfgs = {name: m.jax.cfg for name, m in tiny_models.items()}
  assert cfgs["llama3_rope"].rope_type == "llama3"
  assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].qk_norm
  assert cfgs["qwen3"].qk_norm and not cfgs["qwen3"].qkv_bias
  assert cfgs["llama"].tie_embeddings and not cfgs["llama3_rope"].tie_embeddings
  # The llama3 formula must move some but not all frequencies away from plain RoPE.
  hf_inv = tiny_models["llama3_rope"].hf.model.rotary_emb.inv_freq.double().numpy()
  plain = 1.0 / (10000.0 ** (np.arange(0, 16, 2) / 16))
  assert 0 < np.sum(~np.isclose(hf_inv, plain)) < len(plain)
  np.testing.assert_allclose(cfgs["llama3_rope"].rope_inv_freq(), hf_inv, rtol=1e-6)


# ------------------------------------------------------------------------------ skipped sublayers

def test_tiny_skip_mask_matches_patched_transformers(tiny, hf_logits):
  rng = np.random.default_rng(2)
  ids = rng.integers(0, tiny.jax.cfg.vocab_size, size=48)
  n_layers = tiny.jax.cfg.n_layers
  full = hf_logits(tiny.hf, ids)
  masks = random_masks(n_layers, 3, seed=3) + [
      SkipMask.from_layers(n_layers, attn=range(n_layers)),  # every attention skipped
      SkipMask((True,) * (2 * n_layers)),  # the whole stack skipped
  ]
  errs = []
  for skip in masks:
    with hf_skipping(tiny.hf, skip):
      ref = hf_logits(tiny.hf, ids)
    got = jax_logits(tiny.jax, ids, skip=skip)
    errs.append(_max_err(got, ref))
    assert errs[-1] <= LOGIT_TOL, f"mask {skip}: max|dlogit| {errs[-1]:.3g}"
    assert _max_err(ref, full) > 1e-2, f"mask {skip} changed nothing: the patch did not apply"
  print(f"\n[skip] tiny {tiny.name}: max|dlogit| over {len(masks)} masks {max(errs):.3g}")


def test_whole_stack_skipped_is_embedding_then_head(tiny_models):
  """Independent numpy check of "skipped = identity": no sublayer left, logits are
  lm_head(final_norm(embed[ids]))."""
  m = tiny_models["qwen2"]
  ids = np.array([3, 17, 400, 9])
  p = jax.tree.map(np.asarray, m.jax.params)
  x = p["embed"][ids].astype(np.float64)
  h = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + m.jax.cfg.norm_eps) * p["final_norm"]
  head = p["embed"].T if m.jax.cfg.tie_embeddings else p["lm_head"]
  ref = h @ head
  got = jax_logits(m.jax, ids, skip=SkipMask((True,) * (2 * m.jax.cfg.n_layers)))
  assert _max_err(got, ref) <= 1e-4


def test_smollm2_skip_mask_matches_patched_transformers(smol_jax, smol_hf, hf_logits):
  ids = api.encode_prompt(smol_jax, "Name three primary colors.")
  n_layers = smol_jax.cfg.n_layers
  full = hf_logits(smol_hf, ids)
  errs = []
  for skip in random_masks(n_layers, 2, seed=4):
    with hf_skipping(smol_hf, skip):
      ref = hf_logits(smol_hf, ids)
    got = jax_logits(smol_jax, ids, skip=skip, pad_to=64)
    errs.append(_max_err(got, ref))
    assert errs[-1] <= LOGIT_TOL, f"mask {skip}: max|dlogit| {errs[-1]:.3g}"
    assert _max_err(ref, full) > 1e-2
  print(f"\n[skip] SmolLM2 max|dlogit| over {len(errs)} random masks {max(errs):.3g}")


# ------------------------------------------------------------- T tokens at once vs one at a time

@pytest.mark.parametrize("name", ["llama3_rope", "qwen3"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "skip"])
@pytest.mark.parametrize("rows", [1, 2], ids=["rows1", "rows2"])
def test_multi_token_forward_equals_token_by_token(tiny_models, name, masked, rows):
  """rows=2: the one-token steps pad their projections to two rows (ModelConfig.matmul_rows,
  the GPU default); the 11-token forward needs no padding and is the reference."""
  m = tiny_models[name]
  cfg = m.jax.cfg
  step_cfg = dataclasses.replace(cfg, matmul_rows=rows)
  skip = random_masks(cfg.n_layers, 1, seed=5)[0] if masked else SkipMask.none(cfg.n_layers)
  rng = np.random.default_rng(6)
  prefix = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(1, 5)), jnp.int32)
  block = rng.integers(0, cfg.vocab_size, size=(1, 11)).astype(np.int32)
  attn_len = 256

  _, start = _forward_logits(m.jax.params, prefix, KVCache.create(cfg), cfg=cfg, skip=skip,
                             attn_len=attn_len)
  together, cache_a = _forward_logits(m.jax.params, jnp.asarray(block), start, cfg=cfg,
                                      skip=skip, attn_len=attn_len)
  one_by_one, cache_b = [], start
  for j in range(block.shape[1]):
    logits, cache_b = _forward_logits(m.jax.params, jnp.asarray(block[:, j:j + 1]), cache_b,
                                      cfg=step_cfg, skip=skip, attn_len=attn_len)
    one_by_one.append(np.asarray(logits)[0])

  assert int(cache_a.length) == int(cache_b.length) == 16
  assert _max_err(together, np.stack(one_by_one)) <= STEP_TOL
  for i in range(cfg.n_layers):
    for a, b in ((cache_a.k[i], cache_b.k[i]), (cache_a.v[i], cache_b.v[i])):
      assert _max_err(a[:, :16], b[:, :16]) <= STEP_TOL
      written = np.abs(np.asarray(a[:, :16])).max() > 0
      assert written != skip.skips_attn(i), f"layer {i}: cache written iff attention runs"


# ------------------------------------------------------------------------------ bad skip masks

def test_skip_mask_of_wrong_length_is_rejected(tiny_models):
  m = tiny_models["llama"]
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(SkipMaskError, match=r"skip mask has 6 items but the model has 2 layers"):
    model_lib.forward(m.jax.params, m.jax.cfg, tokens, KVCache.create(m.jax.cfg),
                      skip=SkipMask.none(3), attn_len=256)
  with pytest.raises(SkipMaskError, match=r"odd length 3"):
    SkipMask((True, False, True))
  with pytest.raises(SkipMaskError, match=r"tuple of bools"):
    SkipMask([True, False])
  with pytest.raises(SkipMaskError, match=r"layer index 2 is outside 0\.\.1"):
    SkipMask.from_layers(2, attn=[2])
  with pytest.raises(SkipMaskError, match=r"first and last layers"):
    SkipMask.from_layers(4, mlp=[3]).check(4, protect_ends=True)
