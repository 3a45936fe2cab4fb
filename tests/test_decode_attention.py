"""The Pallas split-KV attention (attention="pallas") of one-token steps and verify windows
(T <= 16 queries): against a float64 NumPy causal-window attention, inside the model against
transformers' greedy generate (AR and speculative verify), and lowered for a CUDA GPU.

On CPU the kernel runs in Pallas's interpreter (same kernel body, same split/merge); its speed
and run-to-run determinism on the H100 are measured by experiments/gpu/check_determinism.py, a
verify window's cost against a step's by experiments/gpu/verify_kernel.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import api
from knapspec_jax import model as model_lib
from knapspec_jax.decode_attention import (SMEM_BYTES, SPLIT, STAGES, TALL_STAGES,
                                           decode_attention, fit_stages, tile_rows)
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.skip_mask import SkipMask


def _numpy_attention(q, keys, values, kv_len):
  """float64 causal-window softmax attention: q [B,T,H,hd] at positions kv_len - T .. kv_len - 1
  over keys/values [B,S,KV,hd]; query t sees positions [0, kv_len - (T - 1 - t))."""
  b, t, h, hd = q.shape
  groups = h // keys.shape[2]
  out = np.zeros((b, t, h, hd))
  for i in range(b):
    for query in range(t):
      n = kv_len[i] - (t - 1 - query)
      for head in range(h):
        k = keys[i, :n, head // groups].astype(np.float64)
        v = values[i, :n, head // groups].astype(np.float64)
        s = k @ q[i, query, head].astype(np.float64) / np.sqrt(hd)
        p = np.exp(s - s.max())
        out[i, query, head] = (p / p.sum()) @ v
  return out


def _random_inputs(seed, batch, queries, heads, kv_heads, hd, cache_len):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((batch, queries, heads, hd)).astype(np.float32)
  keys = rng.standard_normal((batch, cache_len, kv_heads, hd)).astype(np.float32)
  values = rng.standard_normal((batch, cache_len, kv_heads, hd)).astype(np.float32)
  return q, keys, values


@pytest.mark.parametrize("queries,heads,kv_heads,hd,splits,kv_len", [
    (1, 9, 3, 64, 2, [1]),  # SmolLM2's grouping, a single valid key
    (1, 9, 3, 64, 2, [SPLIT]),  # exactly one full split
    (1, 9, 3, 64, 3, [SPLIT + 1]),  # one key into the second split
    (1, 8, 2, 64, 3, [3 * SPLIT, 130]),  # batch of two: the whole cache, and a partial block
    (1, 4, 4, 128, 1, [200]),  # no grouping, head_dim 128
    (1, 16, 1, 32, 2, [300]),  # 16 query heads on one KV head: the padded tile exactly full
    # verify windows: query 0 of a window ending at SPLIT + 1 has no key in the second split
    (2, 9, 3, 64, 2, [SPLIT + 1, 2]),  # ... and a window of two at the cache's start
    (4, 8, 2, 64, 2, [130, 2 * SPLIT]),  # 126..129 straddle a block; the cache's last four
    (4, 9, 3, 64, 2, [SPLIT + 2]),  # SmolLM2's grouping across the split boundary
    (11, 12, 2, 64, 2, [SPLIT + 5]),  # Qwen2.5-1.5B's 6 groups: 66 rows in a 128-row tile
    (11, 4, 4, 32, 2, [SPLIT + 130]),  # one group: positions 376..386 straddle a block
    (11, 32, 8, 64, 1, [11]),  # Llama-8B's 4 groups, the window at the cache's start
    (16, 4, 4, 32, 1, [16]),  # 16 queries of one head each: the 16-row tile exactly full
    (16, 12, 2, 128, 3, [2 * SPLIT + 3, 40]),  # 96 rows, batch of two, across a split
])
def test_kernel_matches_numpy_attention(queries, heads, kv_heads, hd, splits, kv_len):
  """Every query of the window sees exactly its causal prefix: stale cache rows (1e4, past the
  longest valid length) never leak in, and a query with no key in a split is not a NaN."""
  q, keys, values = _random_inputs(queries * 1000 + kv_len[0], len(kv_len), queries, heads,
                                   kv_heads, hd, splits * SPLIT)
  for i, n in enumerate(kv_len):
    keys[i, n:] = values[i, n:] = 1e4
  out = decode_attention(jnp.asarray(q), jnp.asarray(keys), jnp.asarray(values),
                         jnp.asarray(kv_len, jnp.int32))
  assert out.shape == q.shape
  err = float(np.abs(np.asarray(out) - _numpy_attention(q, keys, values, kv_len)).max())
  print(f"\n[pallas attention] T={queries} H={heads} KV={kv_heads} hd={hd} kv_len={kv_len} "
        f"({tile_rows(queries, heads // kv_heads)} rows): max abs err {err:.2e}")
  assert err <= 1e-5


@pytest.mark.parametrize("queries,groups,rows", [(1, 1, 16), (1, 3, 16), (1, 16, 16),
                                                 (4, 3, 16), (11, 6, 128), (11, 4, 64),
                                                 (8, 6, 64), (16, 16, 256)])
def test_tile_rows_are_a_power_of_two_of_at_least_16(queries, groups, rows):
  assert tile_rows(queries, groups) == rows


def test_window_rows_equal_one_token_steps_in_bfloat16():
  """A verify window's query t and a one-token step at the same position run the same blocks in
  the same order (blocks past the query add exactly 0): on the CPU, the same bfloat16 bits
  (Qwen2.5-1.5B's grouping, a window of 11 across the split boundary)."""
  q, keys, values = (jnp.asarray(a, jnp.bfloat16) for a in
                     _random_inputs(5, 1, 11, 12, 2, 64, 3 * SPLIT))
  kv_len = SPLIT + 3
  window = decode_attention(q, keys, values, jnp.asarray([kv_len], jnp.int32))
  steps = [decode_attention(q[:, t:t + 1], keys, values,
                            jnp.asarray([kv_len - (10 - t)], jnp.int32)) for t in range(11)]
  np.testing.assert_array_equal(np.asarray(window.astype(jnp.float32)),
                                np.asarray(jnp.concatenate(steps, axis=1).astype(jnp.float32)))


def test_more_than_16_queries_is_a_clear_error():
  q = jnp.zeros((1, 17, 4, 16))
  cache = jnp.zeros((1, SPLIT, 2, 16))
  with pytest.raises(ValueError, match="1 to 16"):
    decode_attention(q, cache, cache, jnp.asarray([20], jnp.int32))


@pytest.mark.parametrize("queries,heads,kv_heads,hd,splits,attn_len,kv_len", [
    (1, 9, 3, 64, 4, SPLIT, [1]),  # the first bucket of a longer cache: one split
    (1, 9, 3, 64, 4, 2 * SPLIT, [SPLIT + 7]),  # two of four splits, the second partial
    (1, 8, 2, 64, 4, 300, [300, 40]),  # a bucket that is not a multiple of the split
    (1, 12, 2, 128, 8, 4 * SPLIT, [4 * SPLIT, 3 * SPLIT + 1]),  # Qwen2.5-1.5B's grouping
    (5, 12, 2, 128, 8, 2 * SPLIT, [2 * SPLIT, SPLIT + 2]),  # a verify window of 5 in the bucket
])
def test_bucketed_kernel_matches_numpy_attention(queries, heads, kv_heads, hd, splits, attn_len,
                                                 kv_len):
  """The grid covers the first attn_len positions only: what lies past them (NaN here, a stale
  cache in practice) never reaches the output."""
  q, keys, values = _random_inputs(attn_len + kv_len[0], len(kv_len), queries, heads, kv_heads,
                                   hd, splits * SPLIT)
  s = splits * SPLIT
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
  return [tuple(params["grid_mapping"].grid) for params in _pallas_calls(fn, *args)]


def _pallas_calls(fn, *args) -> list[dict]:
  """The parameters of every pallas_call in fn's jaxpr, nested jaxprs included."""
  calls = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pallas_call":
        calls.append(eqn.params)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if hasattr(sub, "jaxpr"):
            visit(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
          elif hasattr(sub, "eqns"):
            visit(sub)
  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return calls


@pytest.mark.parametrize("attn_len,programs", [(256, (1, 1)), (512, (2, 2)), (1024, (4, 4)),
                                               (3000, (12, 12)), (129 * SPLIT, (129, 65))])
@pytest.mark.parametrize("queries", [1, 11])
def test_grid_follows_the_bucket_not_the_cache(attn_len, programs, queries):
  """A Qwen2.5-1.5B-sized cache (32K positions + slack = 129 splits of 256): the kernel launches
  programs for the bucket's splits only. Over the whole cache a verify window's 128-row tile
  takes splits of 512 (65 x 2 KV heads >= MIN_PROGRAMS_TALL_TILE programs; 1024 would leave 66),
  a one-query tile keeps 256 (512 would leave 130 < MIN_PROGRAMS_ONE_TILE)."""
  programs = programs[queries > 1]
  cache = jax.ShapeDtypeStruct((1, 129 * SPLIT, 2, 128), jnp.float32)
  grids = _pallas_grids(lambda q, k, v, n: decode_attention(q, k, v, n, attn_len=attn_len),
                        jax.ShapeDtypeStruct((1, queries, 12, 128), jnp.float32), cache, cache,
                        jax.ShapeDtypeStruct((1,), jnp.int32))
  assert grids == [(programs, 2, 1)]


def test_model_forward_passes_its_bucket_to_the_kernel(tiny_models):
  """model.forward at attention bucket 256 on a cache of 512 + slack positions: a one-token step
  and verify windows of 5 and 16 tokens launch one split per KV head and layer, not one per 256
  positions of the cache; a 17-token forward (a prefill chunk) runs XLA's attention."""
  model = tiny_models["llama"].jax
  cfg = dataclasses.replace(model.cfg, attention="pallas", window_attention="pallas")
  cache = jax.eval_shape(lambda: KVCache.create(cfg))
  assert cache.k[0].shape[1] > 2 * SPLIT

  def step(params, tokens, cache, attn_len):
    return model_lib.forward(params, cfg, tokens, cache, skip=SkipMask.none(cfg.n_layers),
                             attn_len=attn_len).hidden
  for attn_len in (256, 512):
    for t in (1, 5, 16):
      grids = _pallas_grids(lambda p, x, c: step(p, x, c, attn_len), model.params,
                            jax.ShapeDtypeStruct((1, t), jnp.int32), cache)
      assert grids == [(attn_len // SPLIT, cfg.n_kv_heads, 1)] * cfg.n_layers
  assert _pallas_grids(lambda p, x, c: step(p, x, c, 256), model.params,
                       jax.ShapeDtypeStruct((1, 17), jnp.int32), cache) == []


def test_model_forward_with_the_kernel_equals_xla(tiny_models):
  """A verify window at a cursor across the split boundary, and a one-token step, through
  model.forward with attention="pallas": XLA's masked attention's hidden states and the keys
  and values written to the cache (float32; past layer 0 they carry the attention's rounding)."""
  model = tiny_models["qwen2"].jax
  cfgs = {a: dataclasses.replace(model.cfg, attention=a, window_attention=a)
          for a in ("xla", "pallas")}
  rng = np.random.default_rng(4)
  base = KVCache.create(model.cfg)
  base = KVCache(k=tuple(jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in base.k),
                 v=tuple(jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in base.v),
                 length=jnp.asarray(SPLIT - 4, jnp.int32))
  for t in (1, 9):
    tokens = jnp.asarray(rng.integers(0, model.cfg.vocab_size, (1, t)), jnp.int32)
    out = {a: model_lib.forward(model.params, cfg, tokens, base, attn_len=2 * SPLIT,
                                skip=SkipMask.none(cfg.n_layers)) for a, cfg in cfgs.items()}
    np.testing.assert_allclose(np.asarray(out["pallas"].hidden), np.asarray(out["xla"].hidden),
                               atol=2e-5, rtol=2e-5)
    for a, b in zip(out["pallas"].cache.k + out["pallas"].cache.v,
                    out["xla"].cache.k + out["xla"].cache.v):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=2e-5)


def test_bucket_past_the_cache_is_a_clear_error():
  q = jnp.zeros((1, 1, 4, 16))
  cache = jnp.zeros((1, SPLIT, 2, 16))
  with pytest.raises(ValueError, match="attn_len"):
    decode_attention(q, cache, cache, jnp.asarray([5], jnp.int32), attn_len=SPLIT + 1)


@pytest.mark.parametrize("queries", [1, 11])
def test_kernel_bfloat16_inputs(queries):
  q, keys, values = _random_inputs(3, 1, queries, 9, 3, 64, 2 * SPLIT)
  out = decode_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, keys, values)),
                         jnp.asarray([400], jnp.int32))
  assert out.dtype == jnp.bfloat16
  bf = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
  ref = _numpy_attention(bf(q), bf(keys), bf(values), [400])
  assert float(np.abs(np.asarray(out.astype(jnp.float32)) - ref).max()) <= 2e-2


def test_bad_cache_length_is_a_clear_error():
  q = jnp.zeros((1, 1, 4, 16))
  with pytest.raises(ValueError,
                     match="cache length 300 and split=256 must be multiples of block_k=128"):
    decode_attention(q, jnp.zeros((1, 300, 2, 16)), jnp.zeros((1, 300, 2, 16)),
                     jnp.asarray([5], jnp.int32))


# Drafting pays in this cost structure (tests/test_speculative.py's PAYS): verifying a window
# costs one step, so the fixed method drafts every round instead of measuring this CPU.
_PAYS = dict(device="synthetic", model="test", dtype="float32", c0=1e-4, a0=1e-3, a1=0.0,
             m=1e-3, v0=0.0, v1=0.0)


@pytest.mark.parametrize("name,gamma", [("llama", 4), ("qwen3", 15)])
def test_pallas_decoding_matches_transformers_generate(tiny_models, hf_greedy, name, gamma):
  """AR and the fixed drafting method with the kernel in every forward of at most 16 tokens
  (decode, draft, and verify windows of gamma + 1 = 5 and 16): the same tokens as transformers,
  across the 256-position split and attention bucket boundary."""
  tiny = tiny_models[name]
  cfg = dataclasses.replace(tiny.jax.cfg, attention="pallas", window_attention="pallas")
  model = tiny.jax.fresh(cfg=cfg, profile=LatencyProfile(n_layers=cfg.n_layers, **_PAYS))
  ids = np.random.default_rng(11).integers(0, model.cfg.vocab_size, size=230)
  ref = hf_greedy(tiny.hf, ids, 40)
  assert api.generate(model, ids, 40, ignore_eos=True).output_ids == ref
  spec = api.generate(model, ids, 40, method="fixed", ignore_eos=True,
                      config=ks.FixedConfig(gamma=gamma, threshold=0.01))
  assert spec.output_ids == ref
  assert spec.stats["speculation_steps"] > 0 and spec.stats["drafted_tokens"] > 0


def test_pallas_decoding_of_smollm2_matches_transformers_generate(smol_jax, smol_hf,
                                                                 spec_bench_prompts, hf_greedy):
  """The real model with the kernel in every decode step (interpreted: about 1 token/s here)."""
  model = smol_jax.fresh(cfg=dataclasses.replace(smol_jax.cfg, attention="pallas"))
  ids = api.encode_prompt(model, spec_bench_prompts["math"])
  assert api.generate(model, ids, 16, ignore_eos=True).output_ids == hf_greedy(smol_hf, ids, 16)


def test_load_model_accepts_pallas_and_keys_its_own_profile(tiny_models):
  """A different kernel is a different cost structure: its latency profile is stored apart."""
  m = api.load_model(str(tiny_models["llama"].path), attention="pallas", use_cache=False)
  assert m.cfg.attention == "pallas"
  assert tiny_models["llama"].jax.profile_name == m.name
  assert m.profile_name != m.name and "pallas" in m.profile_name


@pytest.mark.parametrize("queries,heads,kv_heads,hd", [
    (1, 9, 3, 64),  # SmolLM2's one-token step
    (4, 9, 3, 64),  # SmolLM2's verify of gamma 3: 12 rows in a 16-row tile
    (11, 12, 2, 128),  # Qwen2.5-1.5B's verify of gamma 10: a 128-row tile, 8 warps
    (11, 32, 8, 128),  # Llama-3.1-8B's: 44 rows in a 64-row tile
    (16, 16, 1, 64),  # the largest tile: 256 rows
])
def test_kernel_lowers_to_triton_for_a_cuda_gpu(queries, heads, kv_heads, hd):
  """The kernel body is lowered for CUDA here on a CPU-only machine: Pallas builds its Triton
  module at this step, so an op Triton cannot express fails this test, not a GPU session."""
  export = pytest.importorskip("jax.export")
  for attn_len, dtype in ((None, jnp.bfloat16), (None, jnp.float32), (3 * SPLIT, jnp.bfloat16)):
    fn = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, attn_len=attn_len,
                                                     interpret=False))
    cache = jax.ShapeDtypeStruct((1, 33 * SPLIT, kv_heads, hd), dtype)
    exported = export.export(fn, platforms=("cuda",), disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            jax.ShapeDtypeStruct((1, queries, heads, hd), dtype), cache, cache,
            jax.ShapeDtypeStruct((1,), jnp.int32))
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 1


@pytest.mark.parametrize("stages", [1, 3, 4])
def test_pipelining_stages_reach_the_triton_call_and_leave_the_arithmetic(stages):
  """decode_attention(stages=N) is Triton's num_stages of the lowered call (a GPU session's
  kernel_split_sweep.py --stages times what it asks for, not the default); in the interpreter
  the outputs are the default's bits, since stages only overlap the same loads; 0 is an error."""
  export = pytest.importorskip("jax.export")
  fn = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, interpret=False, stages=stages))
  cache = jax.ShapeDtypeStruct((1, 4 * SPLIT, 8, 128), jnp.bfloat16)
  module = export.export(fn, platforms=("cuda",), disabled_checks=[
      export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          jax.ShapeDtypeStruct((1, 11, 32, 128), jnp.bfloat16), cache, cache,
          jax.ShapeDtypeStruct((1,), jnp.int32)).mlir_module()
  assert f"num_stages = {stages} : i32" in module
  q, keys, values = _random_inputs(5, 1, 4, 9, 3, 64, 2 * SPLIT)
  kv_len = jnp.asarray([SPLIT + 7], jnp.int32)
  np.testing.assert_array_equal(decode_attention(q, keys, values, kv_len, stages=stages),
                                decode_attention(q, keys, values, kv_len))
  with pytest.raises(ValueError, match="stages=0"):
    decode_attention(q, keys, values, kv_len, stages=0)


def test_tall_tile_stages_reach_a_verify_windows_kernel_only(tiny_models):
  """ModelConfig.tall_tile_stages (default decode_attention.TALL_STAGES, 3) is Triton's
  num_stages of the kernel wherever the model runs a tile taller than one query's (a verify
  window); a one-token step keeps STAGES. Outside 1..8 it is a clear error, and a model's
  profile name carries a depth other than the default."""
  model = tiny_models["llama"].jax
  cfg = dataclasses.replace(model.cfg, attention="pallas", window_attention="pallas")
  assert cfg.tall_tile_stages == TALL_STAGES == 3
  cache = jax.eval_shape(lambda: KVCache.create(cfg))

  def stages(cfg, queries):
    fn = lambda p, x, c: model_lib.forward(p, cfg, x, c, skip=SkipMask.none(cfg.n_layers),
                                           attn_len=256).hidden
    calls = _pallas_calls(fn, model.params, jax.ShapeDtypeStruct((1, queries), jnp.int32), cache)
    assert len(calls) == cfg.n_layers
    return {params["compiler_params"].num_stages for params in calls}

  # 11 queries x 2 heads per KV head: a 32-row tile
  assert stages(cfg, 11) == {3} and stages(cfg, 1) == {STAGES} == {2}
  assert stages(dataclasses.replace(cfg, tall_tile_stages=2), 11) == {2}
  for bad in (0, 9, 2.0, True):
    with pytest.raises(ks.UnsupportedModelError, match="tall_tile_stages must be an integer"):
      dataclasses.replace(cfg, tall_tile_stages=bad)
  both = api.load_model(str(tiny_models["llama"].path), use_cache=False, attention="pallas")
  assert "stages" not in both.profile_name
  shallower = dataclasses.replace(both, cfg=dataclasses.replace(both.cfg, tall_tile_stages=2))
  assert shallower.profile_name == both.profile_name + "+tallstages2"


def test_fit_stages_keeps_a_tall_tile_within_the_h200s_shared_memory():
  """fit_stages against what Triton asked the H200 for (session 32, SMEM_BYTES available): the
  depths that failed there are lowered, those that ran are kept, the float32 128-row tile that
  failed even at depth 2 runs at 1, and a float32 256-row tile is a clear error."""
  bf16, f32 = 2, 4
  assert SMEM_BYTES == 232448
  assert fit_stages(4, 64, 128, bf16) == 3  # 278528 bytes asked at 4 (failed); 3 ran
  assert fit_stages(3, 128, 128, bf16) == 3  # ran (Qwen2.5-1.5B's window of 11)
  assert fit_stages(3, 256, 128, bf16) == 2  # 262144 asked at 3 (failed); 2 ran
  assert fit_stages(3, 128, 128, f32) == 1  # 327680 at 2 and 458752 at 3 (both failed)
  assert fit_stages(3, 32, 128, f32) == 2  # 360448 asked at 3 (failed); 2 ran
  assert fit_stages(2, 16, 64, bf16) == 2
  with pytest.raises(ValueError, match="256-row query tile of head_dim 128 in 32-bit floats"):
    fit_stages(3, 256, 128, f32)  # 458752 asked at 2 (failed)
  # the kernel applies it to tall tiles only: a float32 window of 11 (Qwen2.5-1.5B's heads, a
  # 128-row tile) lowers at depth 1, its one-query step at STAGES
  export = pytest.importorskip("jax.export")

  def depth(queries):
    fn = jax.jit(lambda q, k, v, n: decode_attention(q, k, v, n, interpret=False))
    cache = jax.ShapeDtypeStruct((1, 4 * SPLIT, 2, 128), jnp.float32)
    module = export.export(fn, platforms=("cuda",), disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            jax.ShapeDtypeStruct((1, queries, 12, 128), jnp.float32), cache, cache,
            jax.ShapeDtypeStruct((1,), jnp.int32)).mlir_module()
    return {n for n in range(1, 9) if f"num_stages = {n} : i32" in module}

  assert depth(11) == {1} and depth(1) == {STAGES}


def test_window_attention_follows_the_one_token_kernel_in_load_model(tiny_models):
  """A ModelConfig with attention="pallas" alone runs one-token steps through the kernel and
  verify windows through XLA; load_model's default (None) gives windows the kernel wherever the
  one-token step has it (measured faster on the H200, BENCHMARKS.md 10.13) and XLA otherwise;
  window_attention="pallas" needs the kernel for one-token steps too, and keys its own latency
  profile."""
  model = tiny_models["llama"].jax
  cfg = dataclasses.replace(model.cfg, attention="pallas")
  assert cfg.window_attention == "xla"
  cache = jax.eval_shape(lambda: KVCache.create(cfg))
  window = lambda p, x, c: model_lib.forward(p, cfg, x, c, skip=SkipMask.none(cfg.n_layers),
                                             attn_len=256).hidden
  assert _pallas_grids(window, model.params, jax.ShapeDtypeStruct((1, 5), jnp.int32),
                       cache) == []
  assert len(_pallas_grids(window, model.params, jax.ShapeDtypeStruct((1, 1), jnp.int32),
                           cache)) == cfg.n_layers
  with pytest.raises(ks.UnsupportedModelError, match="window_attention='pallas' needs"):
    dataclasses.replace(model.cfg, attention="xla", window_attention="pallas")
  with pytest.raises(ks.UnsupportedModelError, match="window_attention must be one of"):
    dataclasses.replace(cfg, window_attention="triton")
  path = str(tiny_models["llama"].path)
  with pytest.raises(ks.UnsupportedModelError, match="window_attention='pallas' needs"):
    api.load_model(path, use_cache=False, attention="xla", window_attention="pallas")
  with pytest.raises(ks.UnsupportedModelError, match="window_attention must be one of"):
    api.load_model(path, use_cache=False, attention="pallas", window_attention="triton")
  both = api.load_model(path, use_cache=False, attention="pallas", window_attention="pallas")
  assert both.profile_name.endswith("+pallas_windows")
  default = api.load_model(path, use_cache=False, attention="pallas")
  assert default.cfg.window_attention == "pallas" and default.profile_name == both.profile_name
  assert api.load_model(path, use_cache=False, attention="xla").cfg.window_attention == "xla"
  kept = api.load_model(path, use_cache=False, attention="pallas", window_attention="xla")
  assert kept.cfg.window_attention == "xla" and "windows" not in kept.profile_name
  assert [api.default_window_attention(a) for a in ("pallas", "xla", "cudnn")] == [
      "pallas", "xla", "xla"]


def test_choose_split_picks_what_the_h200_measured():
  """choose_split against the committed H200 sweep (experiments/gpu/kernel_split_sweep.py,
  results/h200/kernel_split/): for every (heads, bucket, T) timed at the default warps, the split
  the rule picks ran within 3% of the fastest split timed there; and the rule leaves SmolLM2
  (3 KV heads, at most 8K positions) on splits of 256 everywhere."""
  import json
  import pathlib
  from knapspec_jax.decode_attention import choose_split, num_warps
  folder = pathlib.Path(__file__).resolve().parents[1] / "results" / "h200" / "kernel_split"
  times = {}
  for path in sorted(folder.glob("*.json")):
    for r in json.loads(path.read_text()):
      if r.get("kind") == "time" and r["warps"] == num_warps(r["rows"]):
        key = (r["model"], r["attn_len"], r["window"], r["rows"], r["programs"] // r["splits"])
        times.setdefault(key, {})[r["split"]] = r["us_per_call"]
  assert len(times) >= 20
  for (model, attn_len, window, rows, kv), by_split in times.items():
    picked = choose_split(attn_len, kv, rows)
    assert picked in by_split, (model, attn_len, window)
    assert by_split[picked] <= 1.03 * min(by_split.values()), (model, attn_len, window, by_split)
  for attn_len in (256, 1024, 4096, 8192):
    for window in (1, 4, 11):
      assert choose_split(attn_len, 3, tile_rows(window, 3)) == SPLIT
