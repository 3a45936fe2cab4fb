"""Split-KV decode attention in Pallas: one query per sequence over the live part of the cache.

A decode or draft step attends one new token to every cached position. XLA compiles that as
about eight kernels per layer and needs the cache sliced to a length bucket; cuDNN's fused
kernel takes the whole cache and a valid length, but its results vary from run to run
(BENCHMARKS.md, section 1). This kernel takes the cache as it is ([B, S, KV, hd], no copy, no
slice) and is deterministic by construction: no atomics, and every sum runs in a fixed order.

The first `attn_len` positions of the cache (the step's attention bucket, a static length that
covers the valid ones) are cut into splits of `split` positions. One program per (split, KV
head, sequence) runs an online softmax over its split in blocks of `block_k` keys, for all the
query heads that share the KV head at once (padded to 16 rows, the smallest matrix-multiply
tile), and writes its partial output, maximum and normalizer; splits at or past the valid
length return at once. A small XLA reduction then merges the splits (flash-decoding). The grid
and the merge follow the bucket, not the cache's capacity: a Qwen2.5-1.5B cache holds 32K
positions (129 splits), a step at 256 positions launches one split per KV head. On CPU the same
kernel runs in Pallas's interpreter, which is how the tests check it against a NumPy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from knapspec_jax import sharding

SPLIT = 256  # cache positions per program; KVCache capacities are multiples of this
BLOCK_K = 128  # keys per inner step of a program
HEAD_ROWS = 16  # query heads of one KV head, padded to the smallest dot tile


def _split_kernel(kv_len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block_k):
  """One split of one KV head: partial (output, max, normalizer) over its valid keys.

  kv_len_ref []: the sequence's valid cache length; q_ref [HEAD_ROWS, hd]; k_ref, v_ref
  [split, hd]; o_ref [HEAD_ROWS, hd] float32; m_ref, l_ref [HEAD_ROWS] float32.
  """
  split = k_ref.shape[0]
  start = pl.program_id(0) * split
  valid = jnp.clip(kv_len_ref[()] - start, 0, split)
  rows, hd = q_ref.shape
  o = jnp.zeros((rows, hd), jnp.float32)
  m = jnp.full((rows,), -jnp.inf, jnp.float32)
  l = jnp.zeros((rows,), jnp.float32)

  def block(j, carry):
    o, m, l = carry
    keys = pl.ds(j * block_k, block_k)
    s = plgpu.dot(q_ref[...], k_ref[keys, :], trans_b=True, allow_tf32=False)  # [rows, block_k]
    s = s * scale
    live = j * block_k + jnp.arange(block_k) < valid
    s = jnp.where(live[None, :], s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))  # finite: every block holds a valid key
    p = jnp.exp(s - m_new[:, None])
    correction = jnp.exp(m - m_new)
    # Rows past the valid length are stale cache entries: p is 0 there, but 0 * inf is NaN.
    v = jnp.where(live[:, None], v_ref[keys, :], 0)
    o = correction[:, None] * o + plgpu.dot(p.astype(v.dtype), v, allow_tf32=False)
    return o, m_new, correction * l + p.sum(axis=-1)

  o, m, l = jax.lax.fori_loop(0, pl.cdiv(valid, block_k), block, (o, m, l))
  o_ref[...] = o
  m_ref[...] = m
  l_ref[...] = l


def n_splits(attn_len: int, split: int = SPLIT) -> int:
  """Programs per (KV head, sequence): the splits that cover the attention bucket."""
  return -(-attn_len // split)


@functools.partial(jax.jit, static_argnames=("attn_len", "split", "block_k", "interpret"))
def decode_attention(q, keys, values, kv_len, *, attn_len: int | None = None, split: int = SPLIT,
                     block_k: int = BLOCK_K, interpret: bool | None = None):
  """Softmax attention of one query per sequence over cache positions [0, kv_len).

  q [B, H, hd]; keys, values [B, S, KV, hd] (a KVCache layer; S a multiple of `split`);
  kv_len int32 [B], 1 <= kv_len <= attn_len. attn_len (static): positions the kernel covers,
  <= S (None: all S); it sets the grid, so a step's cost follows its bucket, not the cache's
  capacity. Returns [B, H, hd] in q's dtype (scores, softmax and the merge in float32).
  interpret: run in Pallas's interpreter (default: off a GPU).
  """
  b, h, hd = q.shape
  _, s, kv, _ = keys.shape
  groups = h // kv
  if s % split or split % block_k:
    raise ValueError(f"cache length {s} must be a multiple of split={split}, itself a "
                     f"multiple of block_k={block_k}")
  attn_len = s if attn_len is None else attn_len
  if not 1 <= attn_len <= s:
    raise ValueError(f"attn_len={attn_len} must lie in [1, {s}] (the cache length)")
  if groups > HEAD_ROWS:
    raise ValueError(f"{groups} query heads per KV head: at most {HEAD_ROWS} supported")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  splits = n_splits(attn_len, split)
  q_rows = jnp.zeros((b, kv, HEAD_ROWS, hd), q.dtype).at[:, :, :groups].set(
      q.reshape(b, kv, groups, hd))
  cache_block = pl.BlockSpec((None, split, None, hd), lambda j, g, i: (i, j, g, 0))
  row_block = pl.BlockSpec((None, None, None, HEAD_ROWS), lambda j, g, i: (i, g, j, 0))
  o, m, l = pl.pallas_call(
      functools.partial(_split_kernel, scale=hd ** -0.5, block_k=block_k),
      grid=(splits, kv, b),
      in_specs=[pl.BlockSpec((None,), lambda j, g, i: (i,)),
                pl.BlockSpec((None, None, HEAD_ROWS, hd), lambda j, g, i: (i, g, 0, 0)),
                cache_block, cache_block],
      out_specs=[pl.BlockSpec((None, None, None, HEAD_ROWS, hd), lambda j, g, i: (i, g, j, 0, 0)),
                 row_block, row_block],
      out_shape=[jax.ShapeDtypeStruct((b, kv, splits, HEAD_ROWS, hd), jnp.float32),
                 jax.ShapeDtypeStruct((b, kv, splits, HEAD_ROWS), jnp.float32),
                 jax.ShapeDtypeStruct((b, kv, splits, HEAD_ROWS), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="split_kv_decode_attention",
  )(kv_len.astype(jnp.int32), q_rows, keys, values)
  # Merge the splits; a split with no valid key has m = -inf and weighs exactly 0.
  m_all = m.max(axis=2, keepdims=True)
  weight = jnp.where(jnp.isfinite(m), jnp.exp(m - m_all), 0.0)
  out = (o * weight[..., None]).sum(axis=2) / (l * weight).sum(axis=2)[..., None]
  return out[:, :, :groups].reshape(b, h, hd).astype(q.dtype)


def sharded_decode_attention(q, keys, values, kv_len, *, attn_len: int):
  """decode_attention as the model calls it: under a tensor-parallel mesh each device runs the
  kernel on its own heads (sharding.map_over_heads; GSPMD cannot split a Pallas call), else the
  kernel as it is."""
  kernel = functools.partial(decode_attention, attn_len=attn_len)
  return sharding.map_over_heads(kernel, q, keys, values, kv_len)
