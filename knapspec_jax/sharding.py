"""Tensor parallelism: the one module that knows about devices, meshes and shardings.

As in jax-llm-examples' Llama 3, every param has logical axes (query heads, KV heads, MLP hidden
dimension, vocabulary) and one small frozen table, `ShardingRules`, maps them to the mesh axis
"tp" or to nothing (replicated). From it come the params' shardings (`param_shardings`, used by
api.to_device to place each tensor straight into its shard) and the KV cache's
(`cache_sharding`, used where the cache is created). The programs themselves are not rewritten:
they are jitted with sharded inputs and GSPMD partitions them (compile_cache keeps each
argument's sharding). The Pallas attention kernel (decode and verify), which GSPMD cannot
split, runs under `jax.shard_map` over the heads (`map_over_heads`).

What is sharded over "tp": wq/wo (and bq) by query heads; wk/wv (bk/bv) and the KV cache by KV
heads when tp divides n_kv_heads, else replicated (each device then holds every KV head; GQA
models often have fewer KV heads than devices); w_gate/w_up/w_down by the MLP hidden dimension;
the embedding and lm_head by vocabulary. Norms are replicated. tp must divide n_heads, d_ff and
vocab_size (make_mesh and check_divides say which does not).

The fused layout (model.fuse_projections: q/k/v and gate/up concatenated along the output axis)
is not sharded: an even split of the concatenated columns would put one device's q columns next
to another device's k columns, so every step would reshuffle them. Under a mesh of more than one
device api.load_model loads the separate layout (separate, head-aligned matmuls per shard cost
nothing extra: fusion only saves kernel launches on one GPU) and refuses fuse=True; a mesh of
one device keeps the fused layout, placed whole.

A single device (mesh None) is the default; then nothing here is called and every code path is
the one without a mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from knapspec_jax.config import ModelConfig, UnsupportedModelError, is_int

AXIS = "tp"  # the one mesh axis: tensor parallel

# Logical axes of every param of model.py's (unfused) layout, one name or None per dimension.
PARAM_AXES = {
    "embed": ("vocab", None), "final_norm": (None,), "lm_head": (None, "vocab"),
    "layer": {"attn_norm": (None,), "wq": (None, "q_heads"), "wk": (None, "kv_heads"),
              "wv": (None, "kv_heads"), "wo": ("q_heads", None), "bq": ("q_heads",),
              "bk": ("kv_heads",), "bv": ("kv_heads",), "q_norm": (None,), "k_norm": (None,),
              "mlp_norm": (None,), "w_gate": (None, "mlp"), "w_up": (None, "mlp"),
              "w_down": ("mlp", None)}}
CACHE_AXES = (None, None, "kv_heads", None)  # KVCache layer [B, capacity, KV, head_dim]


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """Logical axis -> mesh axis (or None: replicated)."""

  q_heads: str | None = AXIS
  kv_heads: str | None = AXIS
  mlp: str | None = AXIS
  vocab: str | None = AXIS

  @classmethod
  def for_model(cls, cfg: ModelConfig, tp: int) -> "ShardingRules":
    """The rules of this model on tp devices: KV heads replicated when tp does not divide them."""
    if tp == 1:
      return cls(None, None, None, None)
    return cls(kv_heads=AXIS if cfg.n_kv_heads % tp == 0 else None)

  def spec(self, axes: tuple) -> P:
    return P(*(None if a is None else getattr(self, a) for a in axes))


def check_divides(cfg: ModelConfig, tp: int):
  """Raises UnsupportedModelError naming the first size that tp devices cannot split evenly."""
  if not is_int(tp) or tp < 1:
    raise UnsupportedModelError(f"tp must be a positive integer, got {tp!r}")
  for name, size in (("n_heads", cfg.n_heads), ("d_ff", cfg.d_ff),
                     ("vocab_size", cfg.vocab_size)):
    if size % tp:
      raise UnsupportedModelError(
          f"tp={tp} does not divide the model's {name}={size}: tensor parallelism splits it "
          f"evenly over the devices; use a tp that divides {name}")


def make_mesh(tp: int, cfg: ModelConfig | None = None, devices=None) -> Mesh:
  """A one-axis mesh ("tp") over the first tp devices (default: jax.devices()).

  Auto axes: the programs are written without sharding annotations and GSPMD partitions them
  from their inputs' shardings. Raises UnsupportedModelError when tp is not a positive integer,
  exceeds or does not divide the device count, or (cfg given) does not divide the model's
  n_heads, d_ff or vocab_size (load_model checks that too).
  """
  if not is_int(tp) or tp < 1:
    raise UnsupportedModelError(f"tp must be a positive integer, got {tp!r}")
  devices = jax.devices() if devices is None else list(devices)
  if cfg is not None:
    check_divides(cfg, tp)
  if tp > len(devices):
    raise UnsupportedModelError(f"tp={tp} needs {tp} devices, only {len(devices)} "
                                f"({devices[0].platform}) are available")
  if len(devices) % tp:
    raise UnsupportedModelError(
        f"tp={tp} does not divide the {len(devices)} available devices "
        f"({devices[0].platform}); use a divisor of {len(devices)}")
  return Mesh(np.asarray(devices[:tp]), (AXIS,), axis_types=(AxisType.Auto,))


def tp_size(mesh: Mesh | None) -> int:
  """Devices along "tp" (1 without a mesh)."""
  return 1 if mesh is None else int(mesh.shape[AXIS])


def _check_mesh(cfg: ModelConfig, mesh: Mesh):
  if not isinstance(mesh, Mesh) or AXIS not in mesh.axis_names or mesh.size != tp_size(mesh):
    raise UnsupportedModelError(f"mesh must be a one-axis jax.sharding.Mesh named {AXIS!r} "
                                f"(sharding.make_mesh), got {mesh!r}")
  check_divides(cfg, tp_size(mesh))


FUSED = {"wqkv": ("wq", "wk", "wv"), "bqkv": ("bq", "bk", "bv"), "w_gate_up": ("w_gate", "w_up")}


def param_shardings(cfg: ModelConfig, mesh: Mesh, fused: bool = False) -> dict:
  """NamedShardings in the layout of the params (model.py): only the keys this config has
  (lm_head when untied, biases for Qwen2, q/k norms for Qwen3). fused: model.fuse_layer's keys
  (wqkv, bqkv, w_gate_up), which are only placed whole, on a mesh of one device (see the module
  docstring); UnsupportedModelError on more."""
  _check_mesh(cfg, mesh)
  tp = tp_size(mesh)
  if fused and tp > 1:
    raise UnsupportedModelError(f"the fused layout (q/k/v and gate/up concatenated) cannot be "
                                f"split over tp={tp} devices: load with fuse=False")
  rules = ShardingRules.for_model(cfg, tp)
  named = lambda axes: NamedSharding(mesh, rules.spec(axes))
  optional = {"bq", "bk", "bv"} if not cfg.qkv_bias else set()
  optional |= {"q_norm", "k_norm"} if not cfg.qk_norm else set()
  layer = {k: named(axes) for k, axes in PARAM_AXES["layer"].items() if k not in optional}
  for name, parts in FUSED.items() if fused else ():
    if parts[0] in layer:  # one device: every part is replicated, and so is their concatenation
      layer[name] = layer[parts[0]]
      for part in parts:
        del layer[part]
  top = {k: named(PARAM_AXES[k]) for k in ("embed", "final_norm", "lm_head")
         if k != "lm_head" or not cfg.tie_embeddings}
  return {**top, "layers": tuple(dict(layer) for _ in range(cfg.n_layers))}


def cache_sharding(cfg: ModelConfig, mesh: Mesh | None) -> NamedSharding | None:
  """The sharding of each KV cache layer [B, capacity, KV, hd]: by KV heads when tp divides
  them, else replicated; None without a mesh (kv_cache.KVCache.create's default placement)."""
  if mesh is None:
    return None
  _check_mesh(cfg, mesh)
  return NamedSharding(mesh, ShardingRules.for_model(cfg, tp_size(mesh)).spec(CACHE_AXES))


def mesh_of(tree) -> Mesh | None:
  """The mesh of the first leaf placed on more than one device (a NamedSharding), else None:
  how the programs, which take the params, find the mesh without being told."""
  for x in jax.tree.leaves(tree):
    s = getattr(x, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh.size > 1:
      return s.mesh
  return None


def key_of(x) -> Any:
  """What a compile-cache key keeps of a leaf's placement: (mesh, spec) when it is split over
  devices, else None. A replicated leaf (one device, uncommitted, or every device of the mesh)
  is None either way, so one program serves all of them: a compiled program takes uncommitted
  arrays, and an abstract leaf without a sharding (a warm-up's) compiles as replicated. The spec
  loses its trailing Nones: a program's outputs come back as P(None, None, "tp") for the
  P(None, None, "tp", None) the cache was made with, the same placement."""
  s = getattr(x, "sharding", None)
  # One device, the common case, answered first. Reading the sharding still costs: a key of
  # 270 leaves took 0.20 ms on the CPU, 0.09 ms before placements were keyed.
  if s is None or isinstance(s, SingleDeviceSharding) or s.is_fully_replicated:
    return None
  if not isinstance(s, NamedSharding):
    return s
  spec = tuple(s.spec)
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return s.mesh, spec


def place_like(value, like: jax.Array) -> jax.Array:
  """value (host data) placed as `like` is: committed to like's sharding where like is, else
  uncommitted (as the arrays jnp makes), so that any program, one compiled for a mesh too,
  takes it. device_put to an uncommitted array's sharding commits to its one device, which a
  mesh's program refuses (latency.measure's draft steps under tp, before session 28)."""
  if not like.committed:
    return jax.numpy.asarray(value)
  return jax.device_put(value, like.sharding)


def abstract(x, mesh: Mesh | None) -> jax.ShapeDtypeStruct:
  """x as a ShapeDtypeStruct that keeps its placement: its sharding when split, replicated over
  the mesh otherwise (pinned, so the compiler cannot choose to split an input the caller passes
  whole); without a mesh, no sharding (the single-device path as it always was)."""
  if mesh is None:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  split = key_of(x) is not None
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=x.sharding if split else NamedSharding(mesh, P()))


def context_mesh():
  """The mesh a program is being traced under (compile_cache sets it with jax.set_mesh), when it
  splits "tp" over more than one device; else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names or mesh.shape[AXIS] == 1:
    return None
  return mesh


def map_over_heads(kernel: Callable, q, keys, values, kv_len):
  """kernel(q [B, T, H, hd], keys, values [B, S, KV, hd], kv_len [B]) -> [B, T, H, hd], run on
  each device over its own heads (jax.shard_map) when traced under a "tp" mesh, else as it is.

  Each device holds H/tp query heads and, when tp divides KV, the KV/tp heads they read (heads
  are split in contiguous blocks, so query head h still reads KV head h // (H / KV)). With KV
  heads replicated, every device runs all heads on its full copy (correct, tp times the work of
  this one small kernel)."""
  mesh = context_mesh()
  if mesh is None:
    return kernel(q, keys, values, kv_len)
  split = keys.shape[2] % mesh.shape[AXIS] == 0
  heads = P(None, None, AXIS, None) if split else P()
  cache = P(None, None, AXIS, None) if split else P()
  return jax.shard_map(kernel, mesh=mesh, in_specs=(heads, cache, cache, P()), out_specs=heads,
                       check_vma=False)(q, keys, values, kv_len)
