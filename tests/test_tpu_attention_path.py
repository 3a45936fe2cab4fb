"""The one-query attention a TPU runs (the XLA path: api.default_attention picks it on a TPU,
where the Pallas kernel, written for Triton, is refused) against a NumPy reference, as issue 16
asks of the TPU attention path. SmolLM2 with this path reproducing transformers' greedy tokens
is tests/test_decoding.py's parity (the CPU default is the same path)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from knapspec_jax import api
from knapspec_jax import model as model_lib


def numpy_attention(q, keys, values, kv_len):
  """Grouped-query attention of one query per head over the first kv_len cache positions."""
  heads, hd = q.shape[-2:]
  kv_heads = keys.shape[-2]
  out = np.zeros((heads, hd), np.float64)
  for h in range(heads):
    k = keys[:kv_len, h // (heads // kv_heads)].astype(np.float64)
    v = values[:kv_len, h // (heads // kv_heads)].astype(np.float64)
    s = k @ q[h].astype(np.float64) / np.sqrt(hd)
    p = np.exp(s - s.max())
    out[h] = (p / p.sum()) @ v
  return out


@pytest.mark.parametrize("heads, kv_heads, hd, attn_len, kv_len", [
    (9, 3, 64, 256, 1), (9, 3, 64, 256, 200), (12, 2, 128, 2048, 1500), (4, 4, 32, 512, 512)])
def test_tpu_one_query_attention_matches_numpy(tiny_models, heads, kv_heads, hd, attn_len,
                                               kv_len):
  assert api.default_attention("bfloat16", platform="tpu") == "xla"
  cfg = dataclasses.replace(tiny_models["llama"].jax.cfg, n_heads=heads, n_kv_heads=kv_heads,
                            head_dim=hd, attention="xla")
  rng = np.random.default_rng(heads + kv_len)
  capacity = attn_len + 64  # stale entries past attn_len and past kv_len must be ignored
  q = rng.standard_normal((heads, hd)).astype(np.float32)
  keys = rng.standard_normal((capacity, kv_heads, hd)).astype(np.float32)
  values = rng.standard_normal((capacity, kv_heads, hd)).astype(np.float32)
  mask = (np.arange(attn_len) < kv_len)[None, None]  # the one query sits at position kv_len - 1
  out = model_lib.attend(cfg, jnp.asarray(q)[None, None], jnp.asarray(keys)[None],
                         jnp.asarray(values)[None], jnp.asarray(mask),
                         jnp.asarray([kv_len], jnp.int32))
  got = np.asarray(out).reshape(heads, hd)
  np.testing.assert_allclose(got, numpy_attention(q, keys, values, kv_len), atol=2e-5,
                             rtol=2e-5)
