"""Pure-functional Llama-family decoder (Llama, Qwen2, Qwen3) with a static sublayer skip mask.

Params are a plain pytree:
  {"embed": [V, D], "final_norm": [D], "lm_head": [D, V] (absent when tied),
   "layers": ({"attn_norm": [D], "wq": [D, H*hd], "wk": [D, KV*hd], "wv": [D, KV*hd],
               "wo": [H*hd, D], "bq"/"bk"/"bv" (Qwen2), "q_norm"/"k_norm": [hd] (Qwen3),
               "mlp_norm": [D], "w_gate": [D, F], "w_up": [D, F], "w_down": [F, D]}, ...)}
Layers are a tuple of per-layer dicts: the forward is unrolled over layers, so a skipped
sublayer is simply absent from the compiled program.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import decode_attention
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask

Params = dict


def rms_norm(x, weight, eps):
  """RMSNorm in float32, cast back to x's dtype before the scale (as transformers does)."""
  xf = x.astype(jnp.float32)
  xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return weight * xf.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions):
  """cos, sin [T, head_dim] in float32 for integer positions [T]."""
  inv_freq = jnp.asarray(cfg.rope_inv_freq(), jnp.float32)
  freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """x [B, T, heads, hd]; rotate-half convention of transformers."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos = cos[None, :, None, :]
  sin = sin[None, :, None, :]
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def linear(x, w, min_rows: int = 1, out_dtype=None):
  """x [..., D_in] @ w [D_in, D_out]: every projection of the model and the LM head.

  min_rows: fewer rows than this (a one-token step) are padded with zero rows, multiplied, and
  sliced back (ModelConfig.matmul_rows: on a GPU, XLA's kernel for a one-row product is slower
  than its kernel for two rows). Each output row depends only on its own input row.
  out_dtype: accumulate and return in this dtype (the LM head's float32 logits).
  """
  rows = math.prod(x.shape[:-1])
  if rows >= min_rows:
    return jnp.matmul(x, w, preferred_element_type=out_dtype)
  padded = jnp.pad(x.reshape(rows, x.shape[-1]), ((0, min_rows - rows), (0, 0)))
  out = jnp.matmul(padded, w, preferred_element_type=out_dtype)[:rows]
  return out.reshape(*x.shape[:-1], w.shape[-1])


def attention_qkv(lp: Params, cfg: ModelConfig, x, cos, sin):
  """Pre-norm and projections of one attention sublayer: q [B,T,H,hd], k and v [B,T,KV,hd]."""
  b, t, _ = x.shape
  h = rms_norm(x, lp["attn_norm"], cfg.norm_eps)
  if "wqkv" in lp:  # fused layout (fuse_projections): one matmul instead of three
    qkv = linear(h, lp["wqkv"], cfg.matmul_rows) + (lp["bqkv"] if cfg.qkv_bias else 0)
    q_end, k_end = cfg.n_heads * cfg.head_dim, (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim
    q, k, v = qkv[..., :q_end], qkv[..., q_end:k_end], qkv[..., k_end:]
  else:
    q, k, v = (linear(h, lp[name], cfg.matmul_rows) for name in ("wq", "wk", "wv"))
    if cfg.qkv_bias:
      q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
  q = q.reshape(b, t, cfg.n_heads, cfg.head_dim)
  k = k.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
  v = v.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q = rms_norm(q, lp["q_norm"], cfg.norm_eps)
    k = rms_norm(k, lp["k_norm"], cfg.norm_eps)
  return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attend(cfg: ModelConfig, q, keys, values, mask, kv_len=None):
  """Grouped-query attention. q [B,T,H,hd]; keys/values [B,S,KV,hd], S >= the mask's length
  (a cache; positions past the mask are ignored); mask [B or 1, T, S'] bool; kv_len: int32
  [B], the valid cache length (the Pallas and cuDNN paths' mask; needed by them).

  The kernels take the causal window mask as kv_len: query t of T sees the positions before
  kv_len - (T - 1 - t), which is `mask` for the windows `forward` attends (queries at positions
  kv_len - T .. kv_len - 1). Returns [B, T, H*hd]. Scores and softmax in float32.
  """
  b, t, _, hd = q.shape
  if cfg.attention == "pallas" and (t == 1 or (cfg.window_attention == "pallas"
                                               and t <= decode_attention.MAX_QUERIES)):
    # Split-KV kernel over the cache's first attn_len positions (the bucket) with its valid
    # length, for a one-token step and a verify window alike (the window's queries share each
    # key block's read): deterministic, no slice; its grid follows the bucket, not the capacity.
    out = decode_attention.sharded_decode_attention(q, keys, values, kv_len,
                                                    attn_len=mask.shape[-1],
                                                    tall_stages=cfg.tall_tile_stages)
    return out.reshape(b, t, cfg.n_heads * hd)
  if cfg.attention == "cudnn" and t == 1:
    # One fused kernel instead of ~8 per layer (BENCHMARKS.md section 1). For one query, the
    # causal mask is exactly "key position < kv_len". The whole cache goes in: slicing it to
    # the bucket would copy it.
    out = jax.nn.dot_product_attention(q, keys, values, key_value_seq_lengths=kv_len,
                                       implementation="cudnn")
    return out.reshape(b, t, cfg.n_heads * hd)
  keys, values = keys[:, :mask.shape[-1]], values[:, :mask.shape[-1]]
  groups = cfg.n_heads // cfg.n_kv_heads
  q = q.reshape(b, t, cfg.n_kv_heads, groups, hd)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32)
  scores = scores * (hd ** -0.5)
  scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, values)
  return out.reshape(b, t, cfg.n_heads * hd)


def mlp(lp: Params, cfg: ModelConfig, x):
  """Pre-norm SwiGLU MLP sublayer output (before the residual add)."""
  h = rms_norm(x, lp["mlp_norm"], cfg.norm_eps)
  if "w_gate_up" in lp:  # fused layout (fuse_projections)
    gate, up = jnp.split(linear(h, lp["w_gate_up"], cfg.matmul_rows), 2, axis=-1)
  else:
    gate, up = linear(h, lp["w_gate"], cfg.matmul_rows), linear(h, lp["w_up"], cfg.matmul_rows)
  return linear(jax.nn.silu(gate) * up, lp["w_down"], cfg.matmul_rows)


def attention_sublayer(lp: Params, cfg: ModelConfig, x, cos, sin, attend_kv: Callable):
  """x [B, T, D] plus one attention sublayer: the layer body every program runs (the decode
  forward and the knapsack search alike), so that a draft the search scores is the draft the
  forward runs.

  attend_kv(q [B,T,H,hd], k, v [B,T,KV,hd]) -> [B, T, H*hd] is where the new keys and values go
  and what they are attended with: `forward` writes them into the KV cache and attends over it
  with the configured kernel (`attend`, cfg.attention); the search attends each budget branch
  over a shared prefix (knapsack._branch_attend).
  """
  q, k, v = attention_qkv(lp, cfg, x, cos, sin)
  return attention_output(lp, cfg, x, attend_kv(q, k, v))


def attention_output(lp: Params, cfg: ModelConfig, x, attended):
  """x plus the output projection of the attended values [B, T, H*hd]."""
  return x + linear(attended, lp["wo"], cfg.matmul_rows)


def gated_attention_sublayer(lp: Params, cfg: ModelConfig, x, cos, sin, skipped,
                             write_kv: Callable, attend_written: Callable):
  """attention_sublayer under a run-time flag (ModelConfig.draft_skip == "runtime"): with
  `skipped` (a bool scalar) the identity, else the same body. Two conds with the KV cache
  outside both, so no cond carries the cache in or out (passing it through one made a CPU step
  take 3.4 s, ../shared/MEASURED.md): the projections, then write_kv(k, v) unconditionally (a
  skipped layer writes zeros at the draft's positions, never read: a skipped layer attends to
  nothing, and verification rewrites those positions in every layer before reading them), then
  attend_written(q) over the cache and the output projection."""
  def project(x):
    return attention_qkv(lp, cfg, x, cos, sin)

  q, k, v = jax.lax.cond(skipped, lambda x: jax.tree.map(jnp.zeros_like,
                                                         jax.eval_shape(project, x)),
                         project, x)
  write_kv(k, v)
  return jax.lax.cond(skipped, lambda x, q: x,
                      lambda x, q: attention_output(lp, cfg, x, attend_written(q)), x, q)


def gated_mlp_sublayer(lp: Params, cfg: ModelConfig, x, skipped):
  """mlp_sublayer under a run-time flag: the identity when `skipped`."""
  return jax.lax.cond(skipped, lambda x: x, lambda x: mlp_sublayer(lp, cfg, x), x)


def mlp_sublayer(lp: Params, cfg: ModelConfig, x):
  """x plus one MLP sublayer (the other half of the layer body, see attention_sublayer)."""
  return x + mlp(lp, cfg, x)


def block(lp: Params, cfg: ModelConfig, x, cos, sin, attend_kv: Callable):
  """One whole layer: attention_sublayer, then mlp_sublayer."""
  return mlp_sublayer(lp, cfg, attention_sublayer(lp, cfg, x, cos, sin, attend_kv))


def lm_head(params: Params, cfg: ModelConfig, h, rows=None, min_rows: int = 1):
  """Final-normed hidden states [..., D] -> float32 logits [..., V]; rows: a part of the head,
  [K, D] (head_rows), whose K logits are returned instead (a draft's vocabulary). min_rows:
  the product is taken over at least this many rows (and cfg.matmul_rows), fewer padded with
  zero rows (linear): a verify and AR at the same width take the head over the same rows, since
  a product of another row count may sum each logit in another order."""
  min_rows = max(min_rows, cfg.matmul_rows)
  if rows is not None:
    return linear(h, rows.T, min_rows, jnp.float32)
  w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  return linear(h, w, min_rows, jnp.float32)


def head_rows(params: Params, cfg: ModelConfig, ids) -> jax.Array:
  """The LM head's rows for token ids [K], as [K, D] (the embedding's rows where it is tied): a
  copy, so that a step reads K rows, not the whole head."""
  if cfg.tie_embeddings:
    return jnp.take(params["embed"], ids, axis=0)
  return jnp.take(params["lm_head"], ids, axis=1).T


class ForwardOut(NamedTuple):
  hidden: jax.Array  # [B, T, D] final-normed hidden states (feed to lm_head)
  cache: KVCache  # cursor advanced by T
  residuals: jax.Array | None  # [2L+1, B, T, D] residual stream before item 0 and after each item


def forward(params: Params, cfg: ModelConfig, tokens, cache: KVCache, *, skip: SkipMask,
            attn_len: int, collect_residuals: bool = False, gate=None) -> ForwardOut:
  """Runs tokens [B, T] at positions cache.length + [0, T) through the kept sublayers.

  Keys/values of executed attention sublayers are written to the cache; each query attends
  to cache positions [0, attn_len) that are <= its own position. attn_len is static (a length
  bucket); the caller guarantees cache.length + T <= attn_len <= cache.capacity.
  gate: None, or a bool array [2L] in SkipMask's item order, the skip set as data: each
  sublayer that the static `skip` keeps runs under a cond on its flag (gated_attention_sublayer,
  gated_mlp_sublayer; ModelConfig.draft_skip == "runtime").
  """
  skip.check(cfg.n_layers)
  b, t = tokens.shape
  pos0 = cache.length
  positions = pos0 + jnp.arange(t, dtype=jnp.int32)
  cos, sin = rope_tables(cfg, positions)
  mask = (jnp.arange(attn_len, dtype=jnp.int32)[None, :] <= positions[:, None])[None]
  kv_len = jnp.full((b,), pos0 + t, jnp.int32)
  x = params["embed"][tokens]
  residuals = [x] if collect_residuals else None
  ks, vs = list(cache.k), list(cache.v)

  def write_kv(i, k, v):  # layer i's new keys and values into the cache
    ks[i] = jax.lax.dynamic_update_slice(ks[i], k.astype(ks[i].dtype), (0, pos0, 0, 0))
    vs[i] = jax.lax.dynamic_update_slice(vs[i], v.astype(vs[i].dtype), (0, pos0, 0, 0))

  def attend_written(i, q):
    return attend(cfg, q, ks[i], vs[i], mask, kv_len)

  def attend_cache(i, q, k, v):
    write_kv(i, k, v)
    return attend_written(i, q)

  for i, lp in enumerate(params["layers"]):
    if not skip.skips_attn(i):
      with jax.named_scope(f"layer{i}/attention"):
        if gate is None:
          x = attention_sublayer(lp, cfg, x, cos, sin, functools.partial(attend_cache, i))
        else:
          x = gated_attention_sublayer(lp, cfg, x, cos, sin, gate[2 * i],
                                       functools.partial(write_kv, i),
                                       functools.partial(attend_written, i))
    if collect_residuals:
      residuals.append(x)
    if not skip.skips_mlp(i):
      with jax.named_scope(f"layer{i}/mlp"):
        x = mlp_sublayer(lp, cfg, x) if gate is None else gated_mlp_sublayer(lp, cfg, x,
                                                                              gate[2 * i + 1])
    if collect_residuals:
      residuals.append(x)
  h = rms_norm(x, params["final_norm"], cfg.norm_eps)
  new_cache = KVCache(k=tuple(ks), v=tuple(vs), length=pos0 + t)
  return ForwardOut(h, new_cache, jnp.stack(residuals) if collect_residuals else None)


def step(params: Params, cfg: ModelConfig, token, cache: KVCache, *, skip: SkipMask,
         attn_len: int, rows: int | None = None, gate=None) -> ForwardOut:
  """One token (int32 []) at cache.length through `forward`, run as a forward over `rows`
  positions (None: cfg.step_rows): the token in row 0, zeros after it. The padding rows' keys
  and values land past the new cursor (stale there, overwritten by the next forward). Returns
  row 0's hidden state [1, 1, D] and the cache with its cursor advanced by one. The caller
  guarantees cache.length + rows <= attn_len (forward's contract for the padded forward)."""
  rows = rows or cfg.step_rows
  tokens = jnp.zeros((1, rows), jnp.int32).at[0, 0].set(token)
  out = forward(params, cfg, tokens, cache, skip=skip, attn_len=attn_len, gate=gate)
  return out._replace(hidden=out.hidden[:, :1], cache=out.cache.rollback(cache.length + 1))


def fuse_layer(lp: dict, concatenate=jnp.concatenate) -> dict:
  """One layer with q/k/v and gate/up weights concatenated: fewer, larger matmuls per step
  (decode on a GPU is bound by kernel launches, not bytes). The forward accepts either layout.
  The separate weights are dropped from the returned dict as each fused one is made."""
  lp = dict(lp)
  if "wq" in lp:
    lp["wqkv"] = concatenate([lp.pop("wq"), lp.pop("wk"), lp.pop("wv")], axis=-1)
    if "bq" in lp:
      lp["bqkv"] = concatenate([lp.pop("bq"), lp.pop("bk"), lp.pop("bv")], axis=-1)
  if "w_gate" in lp:
    lp["w_gate_up"] = concatenate([lp.pop("w_gate"), lp.pop("w_up")], axis=-1)
  return lp


def fuse_projections(params: Params) -> Params:
  """fuse_layer over every layer."""
  return {**params, "layers": tuple(fuse_layer(lp) for lp in params["layers"])}


def cast_params(params: Params, dtype) -> Params:
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def init_random_params(cfg: ModelConfig, key, dtype=jnp.float32, scale: float = 0.05,
                       shardings: dict | None = None) -> Params:
  """Random weights of the right shapes (tests and synthetic latency profiles only).

  shardings: sharding.param_shardings(cfg, mesh), the unfused layout over a mesh: each tensor is
  drawn by a program whose output has its sharding (JAX's partitionable threefry draws each
  device's part only), so no device ever holds more than its shards and a shape larger than
  one device's memory (70B in bfloat16) can be built. Same shapes and scales, other values."""
  if shardings is not None:
    return _sharded_random_params(cfg, key, dtype, scale, shardings)
  keys = iter(jax.random.split(key, 16 * cfg.n_layers + 4))
  normal = lambda shape, s=scale: (s * jax.random.normal(next(keys), shape)).astype(dtype)
  ones = lambda n: (1.0 + 0.1 * jax.random.normal(next(keys), (n,))).astype(dtype)
  d, f, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
  layers = []
  for _ in range(cfg.n_layers):
    lp = {"attn_norm": ones(d), "wq": normal((d, cfg.n_heads * hd)),
          "wk": normal((d, cfg.n_kv_heads * hd)), "wv": normal((d, cfg.n_kv_heads * hd)),
          "wo": normal((cfg.n_heads * hd, d)), "mlp_norm": ones(d),
          "w_gate": normal((d, f)), "w_up": normal((d, f)), "w_down": normal((f, d))}
    if cfg.qkv_bias:
      lp.update(bq=normal((cfg.n_heads * hd,)), bk=normal((cfg.n_kv_heads * hd,)),
                bv=normal((cfg.n_kv_heads * hd,)))
    if cfg.qk_norm:
      lp.update(q_norm=ones(hd), k_norm=ones(hd))
    layers.append(lp)
  params = {"embed": normal((cfg.vocab_size, d), 1.0), "final_norm": ones(d),
            "layers": tuple(layers)}
  if not cfg.tie_embeddings:
    params["lm_head"] = normal((d, cfg.vocab_size))
  return params


def _sharded_random_params(cfg: ModelConfig, key, dtype, scale: float, shardings: dict) -> Params:
  shapes = jax.eval_shape(lambda: init_random_params(cfg, key, dtype, scale))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  places = treedef.flatten_up_to(shardings)

  @functools.cache  # one program per (shape, mean, scale, placement): a few per model
  def draw(shape, mean, s, where):
    return jax.jit(lambda k: (mean + s * jax.random.normal(k, shape)).astype(dtype),
                   out_shardings=where)

  out = []
  for (path, leaf), where, k in zip(leaves, places, jax.random.split(key, len(leaves))):
    name = path[-1].key
    mean, s = (1.0, 0.1) if name.endswith("norm") else (0.0, 1.0 if name == "embed" else scale)
    out.append(draw(leaf.shape, mean, s, where)(k))
  return treedef.unflatten(out)


def param_bytes(params: Params, per_device: bool = False) -> int:
  """The params' bytes; per_device: one device's shards of them (a tensor-parallel model's)."""
  shape = lambda a: a.sharding.shard_shape(a.shape) if per_device else a.shape
  return sum(int(np.prod(shape(a))) * a.dtype.itemsize for a in jax.tree.leaves(params))
