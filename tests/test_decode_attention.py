"""The Pallas split-KV decode attention (attention="pallas"): against a NumPy softmax attention,
inside the model against transformers' greedy generate, and lowered for a CUDA GPU.

On CPU the kernel runs in Pallas's interpreter (same kernel body, same split/merge); its speed
and run-to-run determinism on the H100 are measured by experiments/gpu/check_determinism.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from knapspec_jax import api
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.decode_attention import SPLIT, decode_attention
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask


def _numpy_attention(q, keys, values, kv_len):
  """float64 softmax attention of q [B,H,hd] over keys/values [B,S,KV,hd][:, :kv_len]."""
  b, h, hd = q.shape
  groups = h // keys.shape[2]
  out = np.zeros((b, h, hd))
  for i in range(b):
    for head in range(h):
      k = keys[i, :kv_len[i], head // groups].astype(np.float64)
      v = values[i, :kv_len[i], head // groups].astype(np.float64)
      s = k @ q[i, head].astype(np.float64) / np.sqrt(hd)
      p = np.exp(s - s.max())
      out[i, head] = (p / p.sum()) @ v
  return out


@pytest.mark.parametrize("heads,kv_heads,hd,splits,kv_len", [
    (9, 3, 64, 2, [1]),  # SmolLM2's grouping, a single valid key
    (9, 3, 64, 2, [SPLIT]),  # exactly one full split
    (9, 3, 64, 3, [SPLIT + 1]),  # one key into the second split
    (8, 2, 64, 3, [3 * SPLIT, 130]),  # batch of two: the whole cache, and a partial block
    (4, 4, 128, 1, [200]),  # no grouping, head_dim 128
    (16, 1, 32, 2, [300]),  # 16 query heads on one KV head: the padded tile exactly full
])
def test_kernel_matches_numpy_attention(heads, kv_heads, hd, splits, kv_len):
  rng = np.random.default_rng(len(kv_len) * 1000 + kv_len[0])
  s = splits * SPLIT
  q = rng.standard_normal((len(kv_len), heads, hd)).astype(np.float32)
  keys = rng.standard_normal((len(kv_len), s, kv_heads, hd)).astype(np.float32)
  values = rng.standard_normal((len(kv_len), s, kv_heads, hd)).astype(np.float32)
  keys[:, max(kv_len):] = 1e4  # cache rows past the valid length must not leak in
  out = decode_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values),
                         jnp.asarray(kv_len, jnp.int32))
  err = float(np.abs(np.asarray(out) - _numpy_attention(q, keys, values, kv_len)).max())
  print(f"\n[pallas attention] H={heads} KV={kv_heads} hd={hd} kv_len={kv_len}: max abs err "
        f"{err:.2e}")
  assert err <= 1e-5


@pytest.mark.parametrize("heads,kv_heads,hd,splits,attn_len,kv_len", [
    (9, 3, 64, 4, SPLIT, [1]),  # the first bucket of a longer cache: one split
    (9, 3, 64, 4, 2 * SPLIT, [SPLIT + 7]),  # two of four splits, the second partial
    (8, 2, 64, 4, 300, [300, 40]),  # a bucket that is not a multiple of the split
    (12, 2, 128, 8, 4 * SPLIT, [4 * SPLIT, 3 * SPLIT + 1]),  # Qwen2.5-1.5B's grouping
])
def test_bucketed_kernel_matches_numpy_attention(heads, kv_heads, hd, splits, attn_len, kv_len):
  """The grid covers the first attn_len positions only: what lies past them (NaN here, a stale
  cache in practice) never reaches the output."""
  rng = np.random.default_rng(attn_len + kv_len[0])
  s = splits * SPLIT
  q = rng.standard_normal((len(kv_len), heads, hd)).astype(np.float32)
  keys = rng.standard_normal((len(kv_len), s, kv_heads, hd)).astype(np.float32)
  values = rng.standard_normal((len(kv_len), s, kv_heads, hd)).astype(np.float32)
  keys[:, attn_len:] = np.nan
  values[:, attn_len:] = np.nan
  out = decode_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values),
                         jnp.asarray(kv_len, jnp.int32), attn_len=attn_len)
  err = float(np.abs(np.asarray(out) - _numpy_attention(q, keys, values, kv_len)).max())
  print(f"\n[pallas attention] cache {s} attn_len {attn_len} kv_len={kv_len}: max abs err "
        f"{err:.2e}")
  assert err <= 1e-5


def _pallas_grids(fn, *args) -> list[tuple]:
  """The grid of every pallas_call in fn's jaxpr, nested jaxprs included."""
  grids = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        grids.append(tuple(eqn.params["grid_mapping"].grid))
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if hasattr(sub, "jaxpr"):
            visit(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
          elif hasattr(sub, "eqns"):
            visit(sub)
  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return grids


@pytest.mark.parametrize("attn_len,programs", [(256, 1), (512, 2), (1024, 4), (3000, 12),
                                               (129 * SPLIT, 129)])
def test_grid_follows_the_bucket_not_the_cache(attn_len, programs):
  """A Qwen2.5-1.5B-sized cache (32K positions + slack = 129 splits): the kernel launches
  programs for the bucket's splits only."""
  cache = jax.ShapeDtypeStruct((1, 129 * SPLIT, 2, 128), jnp.float32)
  grids = _pallas_grids(lambda q, k, v, n: decode_attention(q, k, v, n, attn_len=attn_len),
                        jax.ShapeDtypeStruct((1, 12, 128), jnp.float32), cache, cache,
                        jax.ShapeDtypeStruct((1,), jnp.int32))
  assert grids == [(programs, 2, 1)]


def test_model_step_passes_its_bucket_to_the_kernel(tiny_models):
  """model.forward's one-token step at attention bucket 256 on a cache of 512 + slack positions
  launches one split per KV head and layer, not one per 256 positions of the cache."""
  model = tiny_models["llama"].jax
  cfg = dataclasses.replace(model.cfg, attention="pallas")
  cache = jax.eval_shape(lambda: KVCache.create(cfg))
  assert cache.k[0].shape[1] > 2 * SPLIT

  def step(params, tokens, cache, attn_len):
    return model_lib.forward(params, cfg, tokens, cache, skip=SkipMask.none(cfg.n_layers),
                             attn_len=attn_len).hidden
  for attn_len in (256, 512):
    grids = _pallas_grids(lambda p, t, c: step(p, t, c, attn_len), model.params,
                          jax.ShapeDtypeStruct((1, 1), jnp.int32), cache)
    assert grids == [(attn_len // SPLIT, cfg.n_kv_heads, 1)] * cfg.n_layers


def test_bucket_past_the_cache_is_a_clear_error():
  q = jnp.zeros((1, 4, 16))
  cache = jnp.zeros((1, SPLIT, 2, 16))
  with pytest.raises(ValueError, match="attn_len"):
    decode_attention(q, cache, cache, jnp.asarray([5], jnp.int32), attn_len=SPLIT + 1)


def test_kernel_bfloat16_inputs():
  rng = np.random.default_rng(3)
  q, keys, values = (rng.standard_normal(shape).astype(np.float32) for shape in
                     ((1, 9, 64), (1, 2 * SPLIT, 3, 64), (1, 2 * SPLIT, 3, 64)))
  out = decode_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, keys, values)),
                         jnp.asarray([400], jnp.int32))
  assert out.dtype == jnp.bfloat16
  bf = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
  ref = _numpy_attention(bf(q), bf(keys), bf(values), [400])
  assert float(np.abs(np.asarray(out.astype(jnp.float32)) - ref).max()) <= 2e-2


def test_bad_cache_length_is_a_clear_error():
  q = jnp.zeros((1, 4, 16))
  with pytest.raises(ValueError, match="multiple of split"):
    decode_attention(q, jnp.zeros((1, 300, 2, 16)), jnp.zeros((1, 300, 2, 16)),
                     jnp.asarray([5], jnp.int32))


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_pallas_decoding_matches_transformers_generate(tiny_models, hf_greedy, name):
  """AR and a drafting method with the kernel in every one-token step (decode, draft): the same
  tokens as transformers, across the 256-position split and attention bucket boundary."""
  tiny = tiny_models[name]
  model = dataclasses.replace(tiny.jax, compiled=CompileCache(),
                              cfg=dataclasses.replace(tiny.jax.cfg, attention="pallas"))
  ids = np.random.default_rng(11).integers(0, model.cfg.vocab_size, size=230)
  ref = hf_greedy(tiny.hf, ids, 40)
  assert api.generate(model, ids, 40, ignore_eos=True).output_ids == ref
  assert api.generate(model, ids, 40, method="fixed", ignore_eos=True).output_ids == ref


def test_pallas_decoding_of_smollm2_matches_transformers_generate(smol_jax, smol_hf,
                                                                 spec_bench_prompts, hf_greedy):
  """The real model with the kernel in every decode step (interpreted: about 1 token/s here)."""
  model = dataclasses.replace(smol_jax, compiled=CompileCache(),
                              cfg=dataclasses.replace(smol_jax.cfg, attention="pallas"))
  ids = api.encode_prompt(model, spec_bench_prompts["math"])
  assert api.generate(model, ids, 16, ignore_eos=True).output_ids == hf_greedy(smol_hf, ids, 16)


def test_load_model_accepts_pallas_and_keys_its_own_profile(tiny_models):
  """A different kernel is a different cost structure: its latency profile is stored apart."""
  m = api.load_model(str(tiny_models["llama"].path), attention="pallas", use_cache=False)
  assert m.cfg.attention == "pallas"
  assert tiny_models["llama"].jax.profile_name == m.name
  assert m.profile_name != m.name and "pallas" in m.profile_name


def test_kernel_lowers_to_triton_for_a_cuda_gpu():
  """The kernel body is lowered for CUDA here on a CPU-only machine: Pallas builds its Triton
  module at this step, so an op Triton cannot express fails this test, not a GPU session."""
  export = pytest.importorskip("jax.export")
  for attn_len, dtype in ((None, jnp.bfloat16), (None, jnp.float32), (3 * SPLIT, jnp.bfloat16)):
    fn = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, attn_len=attn_len,
                                                     interpret=False))
    cache = jax.ShapeDtypeStruct((1, 33 * SPLIT, 3, 64), dtype)
    exported = export.export(fn, platforms=("cuda",), disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            jax.ShapeDtypeStruct((1, 9, 64), dtype), cache, cache,
            jax.ShapeDtypeStruct((1,), jnp.int32))
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 1
