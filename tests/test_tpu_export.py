"""Every program the project compiles lowers and exports for TPU, from abstract arguments only.

No TPU is reachable here: `jax.export.export(jit, platforms=("tpu",))` lowers a program for TPU
on this CPU (StableHLO, no XLA compile), which is what a TPU runtime would compile. Each program
is built as `CompileCache.get` builds it (compile_cache.jit_program of its statics object, built
by the project's own helpers), through the public warm-up helpers where there is one, for
SmolLM2-135M's and Qwen2.5-Coder-1.5B's configs in bfloat16 with the XLA one-query attention
(the TPU default, api.default_attention). Weights and caches are jax.ShapeDtypeStructs
(jax.eval_shape): nothing is allocated. Each program is exported at the smallest attention
bucket (256), a static length: the other buckets change shapes, not operations. About 20 s on a
2-core CPU (lowering, no compile). The Pallas attention is not exported: load_model refuses it
on a TPU (test_attention_option).

CompileCache compiles only programs registered with `@compile_cache.program`; a registered
program that this test does not export fails `test_every_program_is_covered`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import time

import jax
import jax.numpy as jnp
import pytest

import knapspec_jax
from knapspec_jax import api, compile_cache, decoding, engine, knapsack, latency, methods
from knapspec_jax import speculative
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache, jit_program
from knapspec_jax.config import ModelConfig
from knapspec_jax.sampling import SamplingConfig
from knapspec_jax.skip_mask import SkipMask

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

  def get(self, prog, args):
    self.calls.append((prog, args))


def _abstract_model(cfg: ModelConfig) -> api.Model:
  """A bf16 Model of abstract, fused weights (as load_model lays them out) and a Recorder."""
  assert api.default_attention("bfloat16", platform="tpu") == cfg.attention
  params = jax.eval_shape(lambda: model_lib.fuse_projections(
      model_lib.init_random_params(cfg, jax.random.PRNGKey(0), jnp.bfloat16)))
  return api.Model(cfg, params, None, (0,), "bfloat16", cfg.arch, compiled=Recorder())


def programs(cfg: ModelConfig) -> dict:
  """{label: (statics, abstract args)}: each variant of each program the methods and the latency
  profiler compile; a label starts with its statics class's name."""
  model = _abstract_model(cfg)
  params, rec = model.params, model.compiled
  state = engine.abstract_state(model)
  cache = state.cache
  sampling = SamplingConfig(temperature=0.8, top_p=0.95, seed=0).filter
  skip = SkipMask.from_layers(cfg.n_layers, attn=range(2, cfg.n_layers - 2, 2),
                              mlp=range(3, cfg.n_layers - 2, 4))
  out = {}

  def take(label):
    assert len(rec.calls) == 1, (label, len(rec.calls))
    out[label] = rec.calls.pop()

  engine.warmup_prefill(model, 200)  # a 200-token prompt: one 256-token chunk
  take("PrefillStatics")
  for label, width, sampling_ in [("ARSegmentStatics", 1, None),
                                  ("ARSegmentStatics/width", GAMMA + 1, None),
                                  ("ARSegmentStatics/sampling", 1, sampling)]:
    methods.ar_warmup(model, 200, 2, sampling=sampling_, width=width)
    take(label)
  rec.get(decoding.ARSegmentStatics(cfg, ATTN_LEN, skip=latency.profile_masks(cfg.n_layers)[3]),
          (params, state))
  take("ARSegmentStatics/skip (profiler)")
  for label, sampling_, width in [("SpecSegmentStatics", None, None),
                                  ("SpecSegmentStatics/sampling", sampling, None),
                                  ("SpecSegmentStatics/width", None, GAMMA + 2)]:
    speculative.compile_segments(params, cfg, state, rec, skip=skip, gamma=GAMMA, start=0,
                                 end=1, sampling=sampling_, width=width)  # bucket ATTN_LEN
    take(label)
  runtime = dataclasses.replace(cfg, draft_skip="runtime")  # sublayers gated by lax.cond
  speculative.compile_segments(params, runtime, state, rec, skip=skip, gamma=GAMMA, start=0,
                               end=1)
  take("SpecSegmentStatics/gated (draft_skip=runtime)")
  rec.get(decoding.draft_program(runtime, ATTN_LEN, skip), (params, state))
  take("ARSegmentStatics/gated (profiler, draft_skip=runtime)")
  chunk = knapsack.default_chunk(cfg.n_layers)
  knapsack.compile_search(params, cfg, rec, 16, attn_len=ATTN_LEN, chunk=chunk)
  take("SearchStatics (KnapSpec, profiler)")
  knapsack.compile_search(params, cfg, rec, 16, attn_len=ATTN_LEN, whole_layers=True,
                          chunk=chunk)
  take("SearchStatics/whole_layers (CLaSp)")
  knapsack.compile_exit_agreement(params, cfg, rec, 16, attn_len=ATTN_LEN)
  take("ExitAgreementStatics (DEL)")
  knapsack.compile_mask_agreement(params, cfg, rec, 16, attn_len=ATTN_LEN)
  take("MaskAgreementStatics (KnapSpec, search_new_buckets)")
  rec.get(latency.VerifyLoopStatics(cfg, ATTN_LEN),
          (params, cache, jax.ShapeDtypeStruct((1, GAMMA + 1), jnp.int32),
           jax.ShapeDtypeStruct((), jnp.int32)))
  take("VerifyLoopStatics (profiler)")
  return out


LABELS = tuple(programs(dataclasses.replace(CONFIGS["smollm2-135m"], n_layers=2)))


def registered_programs() -> set[str]:
  """The statics classes of every program the package can compile: compile_cache.PROGRAMS once
  every module of knapspec_jax is imported (each registers its own), less the tests' stubs
  (test_engine.py's stub model)."""
  for module in pkgutil.iter_modules(knapspec_jax.__path__):
    importlib.import_module(f"knapspec_jax.{module.name}")
  return {name for name, cls in compile_cache.PROGRAMS.items()
          if cls.__module__.startswith("knapspec_jax.")}


def test_every_program_is_covered():
  names = registered_programs()
  assert names >= {"PrefillStatics", "ARSegmentStatics", "SpecSegmentStatics",
                   "SearchStatics"}, names
  covered = {label.split("/")[0].split(" ")[0] for label in LABELS}
  assert names <= covered, f"programs not exported for TPU here: {sorted(names - covered)}"
  assert covered <= names, f"exported programs the code no longer registers: {covered - names}"


def test_recorder_sees_every_program():
  """The recorded statics are of the class each label names (the labels are not made up)."""
  rec = programs(dataclasses.replace(CONFIGS["smollm2-135m"], n_layers=2))
  assert {label: type(call[0]).__name__ for label, call in rec.items()} == {
      label: label.split("/")[0].split(" ")[0] for label in LABELS}


def test_only_registered_programs_compile():
  """An unregistered statics class is refused, so none escapes the coverage check above."""
  @dataclasses.dataclass(frozen=True)
  class Unregistered:
    donate_argnums = ()

    def run(self, x):
      return x + 1

  with pytest.raises(TypeError, match="not a registered program"):
    CompileCache().get(Unregistered(), (jnp.ones(2),))


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_program_exports_for_tpu(config):
  cfg = CONFIGS[config]
  failures, times = [], {}
  for label, (prog, args) in programs(cfg).items():
    start = time.perf_counter()
    try:
      exported = jax.export.export(jit_program(prog), platforms=("tpu",))(*args)
    except Exception as e:  # noqa: BLE001 - reported by program name below
      failures.append(f"{label}: {type(e).__name__}: {str(e)[:400]}")
      continue
    times[label] = time.perf_counter() - start
    assert exported.platforms == ("tpu",), label
    assert "stablehlo" in exported.mlir_module(), label
  print(f"{config}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
  assert not failures, f"{config}: programs that do not lower for TPU:\n" + "\n".join(failures)
