"""Bandwidth in every report: the device's read bandwidth (latency.read_bandwidth), stored with
the latency profile, and the bytes a decode step reads (metrics.step_bytes) turned into GB/s and
a fraction of it (metrics.bandwidth)."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from knapspec_jax import latency, metrics
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.latency import PROFILE_DIR, LatencyProfile


@pytest.mark.parametrize("name", ["llama", "qwen2"])  # tied and untied embeddings
def test_step_bytes_counts_weights_read_and_the_live_cache(tiny_models, name):
  """Against the arrays themselves: every weight array a step multiplies with (one embedding
  row only, unless the embedding is the LM head) and the cache rows up to the context."""
  model = tiny_models[name].jax
  cfg = model.cfg
  leaves = {jax.tree_util.keystr(path): np.asarray(a)
            for path, a in jax.tree_util.tree_leaves_with_path(model.params)}
  weights = sum(a.nbytes for key, a in leaves.items()
                if cfg.tie_embeddings or not key.startswith("['embed']"))
  assert cfg.tie_embeddings == (name == "llama")
  cache = KVCache.create(cfg, jnp.bfloat16)
  per_position = sum(a[:, :1].nbytes for a in cache.k + cache.v)
  for context in (1, 100, 300):
    assert metrics.step_bytes(model.params, cfg, context, jnp.bfloat16) == \
        weights + context * per_position


def test_bandwidth_report():
  b = metrics.bandwidth(3_000_000_000, 1.5e-3, 4000.0)
  assert math.isclose(b["step_gb"], 3.0) and math.isclose(b["gb_per_s"], 2000.0)
  assert math.isclose(b["bandwidth_fraction"], 0.5)
  assert metrics.format_bandwidth(b) == "3 GB/step 2000.0 GB/s  50% of 4000"
  unknown = metrics.bandwidth(3_000_000_000, 1.5e-3, None)
  assert unknown["bandwidth_fraction"] is None
  assert metrics.format_bandwidth(unknown) == "3 GB/step 2000.0 GB/s"


def test_read_bandwidth_is_measured_once_per_device():
  first = latency.read_bandwidth()
  assert 0.05 < first < 5000  # GB/s: a CPU core's memory to an HBM GPU, with wide margins
  assert latency.read_bandwidth() == first  # cached: one measurement per process and device
  small = latency.read_bandwidth(32 << 20, repeats=3)
  assert 0.05 < small < 5000


def test_profiles_without_bandwidth_still_load(tmp_path):
  """Profiles saved before the field existed (the committed ones) load with read_gbps None; a
  saved one keeps it."""
  old = sorted(PROFILE_DIR.glob("*.json"))
  assert old, "profiles/ holds the committed profiles"
  for path in old:
    raw = json.loads(path.read_text())
    if "read_gbps" not in raw:
      assert LatencyProfile.load(path).read_gbps is None
  p = dataclasses.replace(LatencyProfile.load(old[0]), read_gbps=4012.5)
  assert LatencyProfile.load(p.save(tmp_path / "p.json")).read_gbps == 4012.5


def test_device_read_gbps_uses_the_profile_of_this_device():
  here = LatencyProfile(latency.device_name(), "m", "float32", 2, *[1e-3] * 6, read_gbps=123.0)
  assert latency.device_read_gbps(here) == 123.0
  elsewhere = dataclasses.replace(here, device="another device")
  assert latency.device_read_gbps(elsewhere) == latency.read_bandwidth()
  assert latency.device_read_gbps(None) == latency.read_bandwidth()


def test_measure_stores_the_bandwidth(tiny_models):
  model = tiny_models["llama"].jax
  p = latency.measure(model.params, model.cfg, jnp.float32, "tiny", attn_lens=(256,),
                      windows=(1, 2), steps=2, repeats=1, log=lambda *a: None)
  assert p.read_gbps == latency.read_bandwidth()
