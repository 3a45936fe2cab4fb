"""Model shapes the GPU scripts time with random weights (decode_kernels.py, round_terms.py,
first_call.py, verify_kernel.py), skip sets spread over them, and what the decode-loop scripts
share: a shape's model with a filled KV cache (random_model) and their JSON records
(write_records)."""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import api, decoding, latency, sharding
from knapspec_jax import model as model_lib
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache

SHAPES = {
    "smollm2": ModelConfig(arch="llama", vocab_size=49152, d_model=576, d_ff=1536, n_layers=30,
                           n_heads=9, n_kv_heads=3, head_dim=64, rope_theta=100000.0,
                           tie_embeddings=True, max_seq_len=8192),
    "qwen2.5-1.5b": ModelConfig(arch="qwen2", vocab_size=151936, d_model=1536, d_ff=8960,
                                n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                                rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
                                max_seq_len=32768, qkv_bias=True),
    # Llama-3.1-8B's published config, RoPE scaling left out (it changes frequencies, not cost);
    # a 32K-position cache (the model's 128K would hold 17 GB of keys and values for nothing):
    # random_model's contexts up to 16K.
    "llama3.1-8b": ModelConfig(arch="llama", vocab_size=128256, d_model=4096, d_ff=14336,
                               n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                               rope_theta=500000.0, tie_embeddings=False, max_seq_len=32768),
    # Qwen3-8B's published config (q/k norm, untied head): issue 14's second 8B shape; the same
    # 32K-position cache.
    "qwen3-8b": ModelConfig(arch="qwen3", vocab_size=151936, d_model=4096, d_ff=12288,
                            n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                            rope_theta=1000000.0, tie_embeddings=False, qk_norm=True,
                            norm_eps=1e-6, max_seq_len=32768),
    # Issue 17's tensor-parallel shapes (tp_scaling.py), published configs, RoPE scaling left
    # out; max_seq_len is set per run from the contexts timed (64K: Llama's 128K native, Qwen's
    # with YaRN).
    "llama3.1-70b": ModelConfig(arch="llama", vocab_size=128256, d_model=8192, d_ff=28672,
                                n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128,
                                rope_theta=500000.0, tie_embeddings=False, max_seq_len=131072),
    "qwen2.5-72b": ModelConfig(arch="qwen2", vocab_size=152064, d_model=8192, d_ff=29568,
                               n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128,
                               rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=False,
                               max_seq_len=131072, qkv_bias=True),
    "qwen3-32b": ModelConfig(arch="qwen3", vocab_size=151936, d_model=5120, d_ff=25600,
                             n_layers=64, n_heads=64, n_kv_heads=8, head_dim=128,
                             rope_theta=1000000.0, tie_embeddings=False, qk_norm=True,
                             norm_eps=1e-6, max_seq_len=131072),
    # --smoke: the same code paths at toy sizes (2 layers, 9 splits of cache)
    "tiny": ModelConfig(arch="qwen2", vocab_size=256, d_model=64, d_ff=128, n_layers=2,
                        n_heads=4, n_kv_heads=2, head_dim=32, max_seq_len=2048, qkv_bias=True),
}


def spread(n_layers: int, count: int) -> list[int]:
  """`count` inner layers (1 .. n_layers - 2; every layer where there are too few) spread
  evenly."""
  pool = np.arange(1, n_layers - 1) if count <= n_layers - 2 else np.arange(n_layers)
  picks = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)
  return sorted({int(pool[i]) for i in picks})


@dataclasses.dataclass
class RandomModel:
  """A model's weights (a shape's random fused ones, random_model, or a checkpoint's,
  loaded_model) and a KV cache of random entries up to `context`."""

  name: str
  cfg: ModelConfig
  params: dict
  base: KVCache  # the filled cache; each call gets a copy (programs donate their state)
  context: int
  draft: decoding.DraftVocab | None = None  # the drafts' vocabulary (ModelConfig.draft_vocab)

  @property
  def capacity(self) -> int:
    return KVCache.capacity_for(self.cfg)

  def fresh_cache(self) -> KVCache:
    return jax.tree.map(jnp.copy, self.base)

  def fresh_state(self, max_new: int) -> decoding.DecodeState:
    """A decode state at the filled cache's cursor, max_new tokens to go, no EOS."""
    return self.state_at(self.context, max_new)

  def state_at(self, cursor: int, max_new: int) -> decoding.DecodeState:
    """A decode state with the cursor moved back to `cursor` (<= context), max_new tokens to go,
    no EOS."""
    return decoding.init_state(self.fresh_cache().rollback(cursor),
                               jnp.zeros((self.cfg.vocab_size,), jnp.float32), max_new, (),
                               draft=jax.tree.map(jnp.copy, self.draft))


def engine_config(cfg: ModelConfig, dtype: str, tp: int = 1) -> ModelConfig:
  """A shape with load_model's kernel, projection and segment defaults for this backend and dtype
  and a mesh of tp devices (on the H200 in bfloat16: the Pallas kernel for steps and windows,
  two-row projections and steps, segments under CUDA graphs on one device; on a CPU: XLA
  attention, one row)."""
  attention = api.default_attention(dtype)
  window = api.default_window_attention(attention)
  return dataclasses.replace(cfg, attention=attention, window_attention=window,
                             matmul_rows=api.default_matmul_rows(),
                             step_rows=api.default_step_rows(attention, window),
                             segment_graphs=api.default_segment_graphs(tp=tp))


def random_params(cfg: ModelConfig, dtype, mesh=None) -> dict:
  """Random weights of the shape: fused on one device (load_model's layout there), unfused and
  drawn straight into their shards over a mesh of several (sharding.param_shardings)."""
  key = jax.random.PRNGKey(0)
  if sharding.tp_size(mesh) > 1:
    return model_lib.init_random_params(cfg, key, dtype,
                                        shardings=sharding.param_shardings(cfg, mesh))
  return model_lib.fuse_projections(model_lib.init_random_params(cfg, key, dtype))


def random_model(name: str, context: int, smoke: bool) -> RandomModel:
  """SHAPES[name] in bfloat16 with the Pallas kernel for one-token steps and for verify windows,
  two-row projections and two-row steps (load_model's defaults on the H200); with smoke, the tiny shape in
  float32 with XLA attention (the CPU check). The context is capped at half the shape's.

  Until session 25 the windows took ModelConfig's default, XLA attention: step_width.py's first
  H200 run and every window these scripts timed before it ran through XLA, not the kernel."""
  name = "tiny" if smoke else name
  dtype = jnp.float32 if smoke else jnp.bfloat16
  cfg = engine_config(SHAPES[name], "float32" if smoke else "bfloat16")
  context = min(context, cfg.max_seq_len // 2)
  params = random_params(cfg, dtype)
  base = latency.random_cache(cfg, dtype, context, jax.random.PRNGKey(1))
  return RandomModel(name, cfg, params, base, context)


def loaded_model(path: str, context: int, dtype: str = "bfloat16",
                 draft_vocab: int = 0) -> RandomModel:
  """A real checkpoint (api.load_model: a packaged name, a GGUF or an HF directory, with
  load_model's kernel and projection defaults for this backend) with a KV cache of random
  entries up to `context` (at most its capacity: the cache is allocated whole either way): the
  decode-loop scripts' timings on real weights, which a random-weight shape cannot stand in for
  where the data moves the clocks. draft_vocab: drafts score that many tokens (the first ids:
  which ones does not change the cost)."""
  model = api.load_model(path, dtype=dtype, draft_vocab=draft_vocab)
  context = min(context, KVCache.capacity_for(model.cfg))
  base = latency.random_cache(model.cfg, api.DTYPES[model.dtype], context, jax.random.PRNGKey(1))
  draft = decoding.draft_vocabulary(model.params, model.cfg, (), ())
  return RandomModel(model.name, model.cfg, model.params, base, context, draft)


def write_records(records: list, output: str | None, default_name: str) -> pathlib.Path:
  """The records as JSON at `output`, default $OUT/default_name (the device tool's folder)."""
  out = pathlib.Path(output or pathlib.Path(os.environ.get("OUT", ".")) / default_name)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(records, indent=1))
  return out
