"""The attention implementation is a load-time option with clear errors; the default is the
deterministic XLA path everywhere."""

from __future__ import annotations

import dataclasses

import jax
import pytest

import knapspec_jax as ks
from knapspec_jax import api


def test_default_attention_is_xla(tiny_models):
  assert tiny_models["llama"].jax.cfg.attention == "xla"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is available on a GPU")
def test_cudnn_attention_off_gpu_is_a_clear_error(tiny_models):
  with pytest.raises(ValueError, match="needs a GPU and dtype='bfloat16'.*attention='xla'"):
    ks.load_model(str(tiny_models["llama"].path), attention="cudnn", use_cache=False)


def test_unknown_attention_is_a_clear_error(tiny_models):
  with pytest.raises(ValueError, match="attention must be one of"):
    dataclasses.replace(tiny_models["llama"].jax.cfg, attention="flash")


@pytest.mark.parametrize("platform, dtype, want", [
    ("cpu", "float32", "xla"), ("cpu", "bfloat16", "xla"),
    ("gpu", "float32", "xla"), ("gpu", "bfloat16", "pallas"),
    ("tpu", "float32", "xla"), ("tpu", "bfloat16", "xla")])
def test_default_attention_by_platform(platform, dtype, want):
  assert api.default_attention(dtype, platform=platform) == want
  api.check_attention(want, dtype, platform=platform)  # the default always runs there


@pytest.mark.parametrize("platform, want", [("cpu", 1), ("gpu", 2), ("tpu", 1)])
def test_default_matmul_rows_by_platform(platform, want):
  assert api.default_matmul_rows(platform) == want


@pytest.mark.parametrize("platform, attention, window, want", [
    ("gpu", "pallas", "pallas", 2), ("gpu", "pallas", "xla", 1), ("gpu", "xla", "xla", 1),
    ("gpu", "cudnn", "xla", 1), ("cpu", "pallas", "pallas", 1), ("tpu", "xla", "xla", 1)])
def test_two_row_steps_only_where_the_kernel_serves_both_steps_and_windows(platform, attention,
                                                                          window, want):
  """A two-row step through XLA's window attention ran 7-28% slower (BENCHMARKS.md 10.29)."""
  assert api.default_step_rows(attention, window, platform) == want


@pytest.mark.parametrize("platform, tp, want", [("cpu", 1, False), ("gpu", 1, True),
                                               ("gpu", 2, False), ("tpu", 1, False)])
def test_default_segment_graphs_by_platform(platform, tp, want):
  assert api.default_segment_graphs(platform, tp=tp) is want


def test_load_model_fills_in_segment_graphs_by_backend(tiny_models, monkeypatch):
  """None: CUDA graphs over the segments' loops on a GPU (faked here; float32 keeps XLA's
  attention, which runs on this CPU), not on the CPU; an explicit choice is kept either way, and
  the benchmark config's unset field reaches load_model as None."""
  from configs import base
  assert base.get_config().segment_graphs is None
  path = str(tiny_models["llama"].path)
  assert ks.load_model(path, use_cache=False).cfg.segment_graphs is False
  assert ks.load_model(path, use_cache=False, segment_graphs=True).cfg.segment_graphs is True
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert ks.load_model(path, use_cache=False).cfg.segment_graphs is True
  assert ks.load_model(path, use_cache=False, segment_graphs=False).cfg.segment_graphs is False


def test_matmul_rows_must_be_a_small_integer(tiny_models):
  for bad in (0, 17, 1.5, True):
    with pytest.raises(ks.UnsupportedModelError, match="matmul_rows must be an integer"):
      dataclasses.replace(tiny_models["llama"].jax.cfg, matmul_rows=bad)
    with pytest.raises(ks.UnsupportedModelError, match="step_rows must be an integer"):
      dataclasses.replace(tiny_models["llama"].jax.cfg, step_rows=bad)
  with pytest.raises(ks.UnsupportedModelError, match=r"step_rows must be an integer in 1\.\.4"):
    dataclasses.replace(tiny_models["llama"].jax.cfg, step_rows=5)  # past the cache's slack


def test_default_attention_follows_the_backend():
  assert api.default_attention("bfloat16") == api.default_attention(
      "bfloat16", platform=jax.default_backend())


@pytest.mark.parametrize("platform, dtype, attention, ok", [
    ("tpu", "bfloat16", "pallas", False), ("tpu", "bfloat16", "cudnn", False),
    ("tpu", "bfloat16", "xla", True), ("cpu", "float32", "pallas", True),
    ("gpu", "bfloat16", "pallas", True), ("gpu", "float32", "cudnn", False),
    ("gpu", "bfloat16", "cudnn", True)])
def test_check_attention_by_platform(platform, dtype, attention, ok):
  if ok:
    api.check_attention(attention, dtype, platform=platform)
  else:
    with pytest.raises(ks.UnsupportedModelError, match=f"attention='{attention}'"):
      api.check_attention(attention, dtype, platform=platform)


def test_load_model_on_a_tpu_backend(tiny_models, monkeypatch):
  """On a TPU backend (faked: none is reachable here) the default is XLA and Pallas is refused
  with a clear error, before anything is loaded."""
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  path = str(tiny_models["llama"].path)
  with pytest.raises(ks.UnsupportedModelError, match="'pallas' has no TPU version.*'xla'"):
    ks.load_model(path, dtype="bfloat16", attention="pallas", use_cache=False)
  model = ks.load_model(path, dtype="bfloat16", use_cache=False)
  assert model.cfg.attention == "xla"
