"""Split-KV attention in Pallas for decode and verify: T <= 16 queries per sequence over the
live part of the cache.

A decode or draft step attends one new token to every cached position; a verify forward attends
a window of T = gamma + 1 tokens (query t at position pos0 + t sees the keys at positions
<= pos0 + t). XLA compiles that as about eight kernels per layer and needs the cache sliced to a
length bucket; cuDNN's fused kernel takes the whole cache and a valid length, but its results
vary from run to run (BENCHMARKS.md, section 1). This kernel takes the cache as it is ([B, S, KV,
hd], no copy, no slice) and is deterministic by construction: no atomics, and every sum runs in
a fixed order.

The first `attn_len` positions of the cache (the step's attention bucket, a static length that
covers the valid ones) are cut into splits of `split` positions (choose_split: 256 to 1024, longer
where the bucket leaves enough programs, since every program writes float32 partials of its whole
tile for the merge to read back). One program per (split, KV head, sequence) runs an online softmax
over its split in blocks of `block_k` keys, for all the (query position, query head) pairs that
share the KV head at once: T x groups rows, position major, padded to a power of two of at least 16
(the smallest matrix-multiply tile; Triton's blocks are powers of two). Each key block is read once
for all T queries, so a verify window reads the cache once, as a one-token step does. Row t of a
window sees the keys before kv_len - (T - 1 - t) (a padded row, a zero query, sees what the last
query sees); splits at or past kv_len return at once, and a row with no valid key in a split (one
past its own position) ends it with maximum -inf and weighs exactly 0 in the merge. A small XLA
reduction then merges the splits (flash-decoding). The grid and the merge follow the bucket, not the
cache's capacity: a Qwen2.5-1.5B cache holds 32K positions (129 splits), a step at 256 positions
launches one split per KV head. With T = 1 the rows are the query heads of one KV head padded to 16,
and every row sees the keys before kv_len.

Where a window and a one-token step take the same split, a query's row runs the same operations in
the same order whatever T is (the same blocks of block_k keys; blocks past its own position add
exactly 0: p = 0, correction 1; splits past it weigh exactly 0), so a verify window and the
one-token steps at the same positions differ only where the backend's dot rounds a taller tile
differently: on the CPU their bfloat16 outputs are the same bits (tests/test_decode_attention.py),
float32 within an ulp; on a GPU experiments/gpu/verify_kernel.py reports it. Where their splits
differ (long buckets on a GPU: Llama-3.1-8B at 16K takes 512 for a step, 1024 for a window of 11)
the merge sums in another order and the bits may differ by a rounding. On CPU the kernel runs in
Pallas's interpreter, which is how the tests check it against a NumPy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from knapspec_jax import sharding

SPLIT = 256  # cache positions per program at least; KVCache capacities are multiples of this
MAX_SPLIT = 1024  # ... at most: the largest split timed (experiments/gpu/kernel_split_sweep.py)
# Programs a split size must still launch to be taken: one-query tiles (16 rows) need more of
# them to read at speed than taller verify tiles, whose fewer, larger partials pay for fewer
# programs (H200, 132 SMs: BENCHMARKS.md 10.14).
MIN_PROGRAMS_ONE_TILE = 192
MIN_PROGRAMS_TALL_TILE = 96
BLOCK_K = 128  # keys per inner step of a program, whatever T (see decode_attention)
MIN_ROWS = 16  # rows of a program's query tile at least: the smallest dot tile
MAX_QUERIES = 16  # query positions per sequence the kernel takes (verify windows of gamma + 1)
STAGES = 2  # Triton's software-pipelining depth of a program's key-block loop for one query's
# tile of MIN_ROWS rows (chosen, not swept: experiments/gpu/kernel_split_sweep.py --stages times
# others); a taller tile takes ModelConfig.tall_tile_stages, fitted to SMEM_BYTES
TALL_STAGES = 3  # ... ModelConfig.tall_tile_stages's default: the verify of 11 at 16K on the 8B
# shapes 5-6% faster than at 2 on the H200, every taller tile timed faster (BENCHMARKS.md 10.36)
SMEM_BYTES = 232448  # shared memory one program may use on the H100 and H200 (XLA's "available")


def fit_stages(stages: int, rows: int, head_dim: int, itemsize: int,
               block_k: int = BLOCK_K) -> int:
  """The deepest pipelining depth <= stages whose shared memory fits SMEM_BYTES for a tile of
  `rows` query rows: `stages` key and value blocks in flight beside the query tile (bfloat16),
  and in float32 a second [rows, head_dim] buffer less one key block. Fitted to every size
  Triton asked for on the H200 (session 32: bfloat16 64 rows at depth 4, 278528 bytes; 256 rows
  at 3, 262144; float32 32 rows at 3, 360448; 128 rows at 2 and 3, 327680 and 458752; 256 rows
  at 2, 458752: all over the 232448 available, and all equal to this count), and below it for
  every tile that ran (float32 32 rows at 2: 229376). Raises ValueError where even depth 1 does
  not fit (float32 windows of 256 rows): bfloat16, or window_attention="xla", serves them."""
  per_stage = 2 * block_k * head_dim * itemsize
  fixed = rows * head_dim * itemsize
  if itemsize == 4:
    fixed += rows * head_dim * 4 - block_k * head_dim * 4
  for depth in range(stages, 0, -1):
    if depth * per_stage + fixed <= SMEM_BYTES:
      return depth
  raise ValueError(f"a {rows}-row query tile of head_dim {head_dim} in {8 * itemsize}-bit floats "
                   f"needs more than the {SMEM_BYTES} bytes of shared memory a program has, at "
                   f"any pipelining depth; use bfloat16 or window_attention='xla' for windows "
                   f"this wide")


def tile_rows(queries: int, groups: int) -> int:
  """Rows of a program's query tile: queries x groups, padded to a power of two >= MIN_ROWS
  (Qwen2.5-1.5B, 6 groups: 16 rows for one query, 128 for a window of 11)."""
  return max(MIN_ROWS, 1 << (queries * groups - 1).bit_length())


def num_warps(rows: int) -> int:
  """Warps of a program with a query tile of `rows`: 4 up to 64 rows (one query's 16 rows: the
  launch measured in BENCHMARKS.md section 1), 8 beyond, so that a 128-row tile's [rows,
  block_k] scores and [rows, hd] accumulator have twice the registers (chosen, not measured;
  experiments/gpu/verify_kernel.py times the result)."""
  return 4 if rows <= 64 else 8


def _split_kernel(kv_len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, scale, block_k,
                  queries, groups):
  """One split of one KV head: partial (output, max, normalizer) of every row over its keys.

  kv_len_ref []: the sequence's valid cache length (its last query sees the keys before it);
  q_ref [rows, hd], row r = query r // groups, head r % groups; k_ref, v_ref [split, hd];
  o_ref [rows, hd] float32; m_ref, l_ref [rows] float32.
  """
  split = k_ref.shape[0]
  start = pl.program_id(0) * split
  kv_len = kv_len_ref[()]
  valid = jnp.clip(kv_len - start, 0, split)  # keys of the split that the last query sees
  rows, hd = q_ref.shape
  if queries == 1:
    limit = kv_len  # every row sees the same keys
  else:  # row r's query (padded rows: as the last query) sees the keys before its limit
    query = jnp.minimum(jnp.arange(rows) // groups, queries - 1)
    limit = (kv_len - (queries - 1) + query)[:, None]
  o = jnp.zeros((rows, hd), jnp.float32)
  m = jnp.full((rows,), -jnp.inf, jnp.float32)
  l = jnp.zeros((rows,), jnp.float32)

  def block(j, carry):
    o, m, l = carry
    keys = pl.ds(j * block_k, block_k)
    s = plgpu.dot(q_ref[...], k_ref[keys, :], trans_b=True, allow_tf32=False)  # [rows, block_k]
    s = s * scale
    position = start + j * block_k + jnp.arange(block_k)
    s = jnp.where(position[None, :] < limit, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=-1))
    # A row with no valid key yet (its limit lies before this split) keeps m = -inf: shifting
    # by 0 instead makes p and the correction exactly 0, not exp(-inf - -inf) = NaN.
    shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    p = jnp.exp(s - shift[:, None])
    correction = jnp.exp(m - shift)
    # Keys past kv_len are stale cache entries: p is 0 there, but 0 * inf is NaN.
    v = jnp.where((position < kv_len)[:, None], v_ref[keys, :], 0)
    o = correction[:, None] * o + plgpu.dot(p.astype(v.dtype), v, allow_tf32=False)
    return o, m_new, correction * l + p.sum(axis=-1)

  o, m, l = jax.lax.fori_loop(0, pl.cdiv(valid, block_k), block, (o, m, l))
  o_ref[...] = o
  m_ref[...] = m
  l_ref[...] = l


def n_splits(attn_len: int, split: int = SPLIT) -> int:
  """Programs per (KV head, sequence): the splits that cover the attention bucket."""
  return -(-attn_len // split)


def choose_split(attn_len: int, heads_x_sequences: int, rows: int) -> int:
  """Cache positions per program: SPLIT doubled up to MAX_SPLIT while the bucket's programs
  (splits x KV heads x sequences) stay at or above the tile's minimum. Every program writes
  float32 partials of its whole tile that the merge reads back, so a long bucket in small splits
  moves more partial bytes than it saves in parallelism (on the H200, Llama-3.1-8B heads at 16K:
  a 64-row verify tile 62 us per layer in splits of 256, 47 in splits of 1024; a one-query tile
  37 us in 256, 33 in 512, 38 in 1024)."""
  floor = MIN_PROGRAMS_ONE_TILE if rows <= MIN_ROWS else MIN_PROGRAMS_TALL_TILE
  split = SPLIT
  while split < MAX_SPLIT and n_splits(attn_len, 2 * split) * heads_x_sequences >= floor:
    split *= 2
  return split


@functools.partial(jax.jit, static_argnames=("attn_len", "split", "block_k", "warps",
                                             "stages", "tall_stages", "interpret"))
def decode_attention(q, keys, values, kv_len, *, attn_len: int | None = None,
                     split: int | None = None,
                     block_k: int = BLOCK_K, warps: int | None = None,
                     stages: int | None = None, tall_stages: int = TALL_STAGES,
                     interpret: bool | None = None):
  """Causal softmax attention of the last T positions of each sequence over its cache.

  q [B, T, H, hd], 1 <= T <= MAX_QUERIES: queries at positions kv_len - T .. kv_len - 1 (a one-token
  step: T = 1); query t sees cache positions [0, kv_len - (T - 1 - t)), its own included. keys,
  values [B, S, KV, hd] (a KVCache layer, the window's own keys written; S a multiple of block_k);
  kv_len int32 [B], T <= kv_len <= attn_len. attn_len (static): positions the kernel covers, <= S
  (None: all S); it sets the grid, so a step's cost follows its bucket, not the cache's capacity.
  Returns [B, T, H, hd] in q's dtype (scores, softmax and the merge in float32). split: cache
  positions per program, a multiple of block_k (the last split may reach past the cache: it reads
  only keys before kv_len; None: choose_split's). block_k: keys per inner step; the same for every
  T, so that a verify window's rows sum their blocks as the one-token steps at the same positions do
  (in bfloat16 on the CPU the outputs are the same bits). warps: warps per program (None: num_warps
  of the tile). stages: Triton's pipelining depth of the key-block loop (key and value blocks in
  flight per program; the same arithmetic whatever it is), for any tile as given; None: STAGES
  for one query's tile of MIN_ROWS rows, and for a taller one (a verify window's) tall_stages
  (the model passes ModelConfig.tall_tile_stages) or the deepest below it that fits the
  program's shared memory (fit_stages). interpret: run in Pallas's interpreter (default: off a
  GPU).
  """
  b, t, h, hd = q.shape
  _, s, kv, _ = keys.shape
  groups = h // kv
  rows = tile_rows(t, groups)
  attn_len = s if attn_len is None else attn_len
  if not 1 <= attn_len <= s:
    raise ValueError(f"attn_len={attn_len} must lie in [1, {s}] (the cache length)")
  split = choose_split(attn_len, kv * b, rows) if split is None else split
  if s % block_k or split % block_k:
    raise ValueError(f"cache length {s} and split={split} must be multiples of "
                     f"block_k={block_k}")
  if not 1 <= t <= MAX_QUERIES:
    raise ValueError(f"{t} query positions: the kernel takes 1 to {MAX_QUERIES}")
  if groups > MIN_ROWS:
    raise ValueError(f"{groups} query heads per KV head: at most {MIN_ROWS} supported")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  if stages is None and rows <= MIN_ROWS:
    stages = STAGES
  elif stages is None:  # a tall tile, fitted to the GPU's shared memory (the interpreter has none)
    stages = tall_stages if interpret else fit_stages(tall_stages, rows, hd,
                                                      jnp.dtype(keys.dtype).itemsize, block_k)
  if stages < 1:
    raise ValueError(f"stages={stages}: Triton's pipelining depth is at least 1")
  splits = n_splits(attn_len, split)
  # [B, T, KV, groups, hd] -> [B, KV, T * groups, hd]: row r = (query r // groups, head r % groups)
  q_rows = q.reshape(b, t, kv, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, kv, t * groups, hd)
  q_rows = jnp.pad(q_rows, ((0, 0), (0, 0), (0, rows - t * groups), (0, 0)))
  cache_block = pl.BlockSpec((None, split, None, hd), lambda j, g, i: (i, j, g, 0))
  row_block = pl.BlockSpec((None, None, None, rows), lambda j, g, i: (i, g, j, 0))
  o, m, l = pl.pallas_call(
      functools.partial(_split_kernel, scale=hd ** -0.5, block_k=block_k, queries=t,
                        groups=groups),
      grid=(splits, kv, b),
      in_specs=[pl.BlockSpec((None,), lambda j, g, i: (i,)),
                pl.BlockSpec((None, None, rows, hd), lambda j, g, i: (i, g, 0, 0)),
                cache_block, cache_block],
      out_specs=[pl.BlockSpec((None, None, None, rows, hd), lambda j, g, i: (i, g, j, 0, 0)),
                 row_block, row_block],
      out_shape=[jax.ShapeDtypeStruct((b, kv, splits, rows, hd), jnp.float32),
                 jax.ShapeDtypeStruct((b, kv, splits, rows), jnp.float32),
                 jax.ShapeDtypeStruct((b, kv, splits, rows), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=warps or num_warps(rows), num_stages=stages),
      interpret=interpret,
      name="split_kv_decode_attention",
  )(kv_len.astype(jnp.int32), q_rows, keys, values)
  # Merge the splits; a split where a row has no valid key has m = -inf and weighs exactly 0.
  m_all = m.max(axis=2, keepdims=True)
  weight = jnp.where(m > -jnp.inf, jnp.exp(m - m_all), 0.0)
  out = (o * weight[..., None]).sum(axis=2) / (l * weight).sum(axis=2)[..., None]
  out = out[:, :, :t * groups].reshape(b, kv, t, groups, hd).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, h, hd).astype(q.dtype)


def sharded_decode_attention(q, keys, values, kv_len, *, attn_len: int,
                             tall_stages: int = TALL_STAGES):
  """decode_attention as the model calls it: under a tensor-parallel mesh each device runs the
  kernel on its own heads (sharding.map_over_heads; GSPMD cannot split a Pallas call), else the
  kernel as it is."""
  kernel = functools.partial(decode_attention, attn_len=attn_len, tall_stages=tall_stages)
  return sharding.map_over_heads(kernel, q, keys, values, kv_len)
