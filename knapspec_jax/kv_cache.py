"""Preallocated KV cache with an int32 cursor: rollback after a rejected draft moves the cursor."""

from __future__ import annotations


import flax.struct
import jax
import jax.numpy as jnp

from knapspec_jax.config import ModelConfig

# Positions past the model's context that a speculation round may write into (padded draft and
# verify windows). They are never attended from a valid position: causality masks them.
SLACK = 32
TILE = 256  # a multiple of decode_attention.SPLIT


@flax.struct.dataclass
class KVCache:
  """Per-layer keys and values, each [B, capacity, n_kv_heads, head_dim], and the cursor.

  `length` is the number of valid positions; writes go to positions length, length + 1, ...
  Per-layer arrays (not one stacked [L, ...] array) keep XLA:CPU from copying a layer's slice.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  length: jax.Array  # int32 []

  @staticmethod
  def capacity_for(cfg: ModelConfig) -> int:
    """Positions a cache for this model holds: its context plus the speculation slack, rounded
    up to a multiple of TILE (the cuDNN decode attention reads the whole cache in tiles)."""
    return -(-(cfg.max_seq_len + SLACK) // TILE) * TILE

  @classmethod
  def create(cls, cfg: ModelConfig, dtype=jnp.float32, batch: int = 1,
             sharding=None) -> "KVCache":
    """A zeroed cache; sharding (sharding.cache_sharding): each layer's placement over a mesh,
    made in place on the devices (None: the default device)."""
    shape = (batch, cls.capacity_for(cfg), cfg.n_kv_heads, cfg.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, dtype, device=sharding) for _ in range(cfg.n_layers))
    return cls(k=zeros(), v=zeros(), length=jnp.zeros((), jnp.int32))

  @classmethod
  def abstract(cls, cfg: ModelConfig, dtype=jnp.float32, batch: int = 1,
               sharding=None) -> "KVCache":
    """create's shapes as ShapeDtypeStructs, with their sharding, for compiling ahead of time
    (jax.eval_shape of create drops a sharding over a mesh of Auto axes)."""
    shape = (batch, cls.capacity_for(cfg), cfg.n_kv_heads, cfg.head_dim)
    layer = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return cls(k=(layer,) * cfg.n_layers, v=(layer,) * cfg.n_layers,
               length=jax.ShapeDtypeStruct((), jnp.int32))

  @property
  def capacity(self) -> int:
    return self.k[0].shape[1]

  def rollback(self, length) -> "KVCache":
    """Forgets every position >= length (the entries stay, masked, until overwritten)."""
    return self.replace(length=jnp.asarray(length, jnp.int32))
