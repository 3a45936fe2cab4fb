"""The attention implementation is a load-time option with clear errors; the default is the
deterministic XLA path everywhere."""

from __future__ import annotations

import dataclasses

import jax
import pytest

import knapspec_jax as ks


def test_default_attention_is_xla(tiny_models):
  assert tiny_models["llama"].jax.cfg.attention == "xla"


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is available on a GPU")
def test_cudnn_attention_off_gpu_is_a_clear_error(tiny_models):
  with pytest.raises(ValueError, match="needs a GPU and dtype='bfloat16'.*attention='xla'"):
    ks.load_model(str(tiny_models["llama"].path), attention="cudnn", use_cache=False)


def test_unknown_attention_is_a_clear_error(tiny_models):
  with pytest.raises(ValueError, match="attention must be one of"):
    dataclasses.replace(tiny_models["llama"].jax.cfg, attention="flash")
