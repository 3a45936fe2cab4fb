"""Every program the project compiles lowers and exports for TPU, from abstract arguments only.

No TPU is reachable here: `jax.export.export(jit, platforms=("tpu",))` lowers a program for TPU
on this CPU (StableHLO, no XLA compile), which is what a TPU runtime would compile. Each program
is built as `CompileCache.get` builds it (compile_cache.jit_program, the static kwargs from the
project's own helpers), through the public warm-up helpers where there is one, for SmolLM2-135M's
and Qwen2.5-Coder-1.5B's configs in bfloat16 with the XLA one-query attention (the TPU default,
api.default_attention). Weights and caches are jax.ShapeDtypeStructs (jax.eval_shape): nothing is
allocated. Each program is exported at the smallest attention bucket (256), a static length: the
other buckets change shapes, not operations. About 20 s on a 2-core CPU (lowering, no compile).
The Pallas attention is not exported: load_model refuses it on a TPU (test_attention_option).

A program name passed to CompileCache.get / get_async anywhere in knapspec_jax/ that this test
does not export fails `test_every_program_is_covered`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import pytest

from knapspec_jax import api, decoding, knapsack, latency, speculative
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache, jit_program
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.sampling import SamplingConfig
from knapspec_jax.skip_mask import SkipMask

PACKAGE = pathlib.Path(api.__file__).resolve().parent
ATTN_LEN = 256  # the smallest attention bucket
GAMMA = 4

# SmolLM2-135M-Instruct and Qwen2.5-Coder-1.5B-Instruct (their config.json), full contexts.
CONFIGS = {
    "smollm2-135m": ModelConfig(
        arch="llama", vocab_size=49152, d_model=576, d_ff=1536, n_layers=30, n_heads=9,
        n_kv_heads=3, head_dim=64, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True,
        max_seq_len=8192),
    "qwen2.5-coder-1.5b": ModelConfig(
        arch="qwen2", vocab_size=151936, d_model=1536, d_ff=8960, n_layers=28, n_heads=12,
        n_kv_heads=2, head_dim=128, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False,
        max_seq_len=32768, qkv_bias=True),
}


class Recorder(CompileCache):
  """A CompileCache that records what it is asked to compile instead of compiling it."""

  def __init__(self):
    super().__init__()
    self.calls = []

  def get(self, name, fn, args, static, donate_argnums=()):
    self.calls.append((name, fn, args, static, donate_argnums))


def _abstract_model(cfg: ModelConfig) -> api.Model:
  """A bf16 Model of abstract, fused weights (as load_model lays them out) and a Recorder."""
  assert api.default_attention("bfloat16", platform="tpu") == cfg.attention
  params = jax.eval_shape(lambda: model_lib.fuse_projections(
      model_lib.init_random_params(cfg, jax.random.PRNGKey(0), jnp.bfloat16)))
  return api.Model(cfg, params, None, (0,), "bfloat16", cfg.arch, compiled=Recorder())


def _abstract_state(model: api.Model) -> decoding.DecodeState:
  cache = jax.eval_shape(lambda: KVCache.create(model.cfg, jnp.bfloat16))
  logits = jax.ShapeDtypeStruct((model.cfg.vocab_size,), jnp.float32)
  return jax.eval_shape(lambda c, l: decoding.init_state(c, l, 1, model.eos_ids), cache, logits)


def programs(cfg: ModelConfig) -> dict:
  """{label: (program name, fn, abstract args, static kwargs, donate_argnums)}: each variant of
  each program the methods and the latency profiler compile."""
  model = _abstract_model(cfg)
  params, rec = model.params, model.compiled
  state = _abstract_state(model)
  cache = state.cache
  sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=0).filter
  skip = SkipMask.from_layers(cfg.n_layers, attn=range(2, cfg.n_layers - 2, 2),
                              mlp=range(3, cfg.n_layers - 2, 4))
  out = {}

  def take(label):
    assert len(rec.calls) == 1, (label, len(rec.calls))
    out[label] = rec.calls.pop()

  api.warmup_prefill(model, 200)  # a 200-token prompt: one 256-token chunk
  take("prefill_chunk")
  for label, static in [
      ("ar_segment", decoding.ar_static(cfg, ATTN_LEN)),
      ("ar_segment/width", decoding.ar_static(cfg, ATTN_LEN, width=GAMMA + 1)),
      ("ar_segment/sampling", decoding.ar_static(cfg, ATTN_LEN, sampling=sampling)),
      ("ar_segment/skip (profiler)", dict(cfg=cfg, attn_len=ATTN_LEN,
                                          skip=latency.profile_masks(cfg.n_layers)[3]))]:
    rec.get("ar_segment", decoding.ar_segment, (params, state), static, donate_argnums=(1,))
    take(label)
  for label, sampling_, width in [("spec_segment", None, None),
                                  ("spec_segment/sampling", sampling, None),
                                  ("spec_segment/width", None, GAMMA + 2)]:
    if width is None:
      speculative.compile_segments(params, cfg, state, rec, skip=skip, gamma=GAMMA,
                                   buckets=[ATTN_LEN], sampling=sampling_)
      take(label)
    else:  # compile_segments has no width: run_rounds builds the same args
      counters = jax.eval_shape(speculative.SpecCounters.zeros)
      args = (params, state, counters, jax.ShapeDtypeStruct((), jnp.int32),
              jax.ShapeDtypeStruct((), jnp.float32))
      rec.get("spec_segment", speculative.spec_segment, args,
              speculative.segment_static(cfg, skip, GAMMA, ATTN_LEN, width=width),
              donate_argnums=(1,))
      take(label)
  chunk = knapsack.default_chunk(cfg.n_layers)
  knapsack.compile_search(params, cfg, rec, 16, attn_len=ATTN_LEN, chunk=chunk)
  take("knapsack_search (KnapSpec, profiler)")
  knapsack.compile_search(params, cfg, rec, 16, attn_len=ATTN_LEN, whole_layers=True,
                          chunk=chunk)
  take("knapsack_search/whole_layers (CLaSp)")
  knapsack.compile_exit_agreement(params, cfg, rec, 16, attn_len=ATTN_LEN)
  take("exit_agreement (DEL)")
  rec.get("verify_loop", latency.verify_loop,
          (params, cache, jax.ShapeDtypeStruct((1, GAMMA + 1), jnp.int32),
           jax.ShapeDtypeStruct((), jnp.int32)),
          dict(cfg=cfg, attn_len=ATTN_LEN), donate_argnums=(1,))
  take("verify_loop (profiler)")
  return out


LABELS = tuple(programs(dataclasses.replace(CONFIGS["smollm2-135m"], n_layers=2)))


def compiled_program_names() -> set[str]:
  """Names passed to CompileCache.get / get_async in knapspec_jax/: a string literal followed
  by a function (dict.get("key", default) calls have no function second)."""
  pattern = re.compile(r"\.get(?:_async)?\(\s*(\"\w+\"|'\w+'|[A-Za-z_][\w.]*)\s*,\s*"
                       r"[A-Za-z_][\w.]*\s*,")
  names = set()
  for path in sorted(PACKAGE.glob("*.py")):
    for m in pattern.finditer(path.read_text()):
      first = m.group(1)
      assert first[0] in "\"'", f"{path.name}: a program compiled under a non-literal name {first}"
      names.add(first[1:-1])
  return names


def test_every_program_is_covered():
  names = compiled_program_names()
  assert names >= {"prefill_chunk", "ar_segment", "spec_segment", "knapsack_search"}, names
  covered = {label.split("/")[0].split(" ")[0] for label in LABELS}
  assert names <= covered, f"programs not exported for TPU here: {sorted(names - covered)}"
  assert covered <= names, f"exported programs the code no longer compiles: {covered - names}"


def test_recorder_sees_every_program_name():
  """The recorded names are the program names (the labels are not made up)."""
  rec = programs(dataclasses.replace(CONFIGS["smollm2-135m"], n_layers=2))
  assert {label: call[0] for label, call in rec.items()} == {
      label: label.split("/")[0].split(" ")[0] for label in LABELS}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_program_exports_for_tpu(config):
  cfg = CONFIGS[config]
  failures, times = [], {}
  for label, (name, fn, args, static, donate) in programs(cfg).items():
    start = time.perf_counter()
    try:
      exported = jax.export.export(jit_program(fn, static, donate), platforms=("tpu",))(*args)
    except Exception as e:  # noqa: BLE001 - reported by program name below
      failures.append(f"{name} [{label}]: {type(e).__name__}: {str(e)[:400]}")
      continue
    times[label] = time.perf_counter() - start
    assert exported.platforms == ("tpu",), label
    assert "stablehlo" in exported.mlir_module(), label
  print(f"{config}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
  assert not failures, f"{config}: programs that do not lower for TPU:\n" + "\n".join(failures)

