"""Tensor-parallel runs for tests/test_sharding.py, in a process of its own with 8 virtual CPU
devices (the rest of the suite keeps its usual single device). Prints one JSON object.

  python tests/sharding_worker.py generate '{"model": dir, "prompt": [ids], "new": 12,
                                             "tps": [1, 2], "methods": ["ar", "fixed"]}'
  python tests/sharding_worker.py pallas '{"model": dir, "prompt": [ids], "new": 6, "tps": [2]}'
  python tests/sharding_worker.py measured '{"model": dir, "prompt": [ids], "new": 12, "tp": 2}'
  python tests/sharding_worker.py errors '{"model": dir, "undivided": dir}'

Every run is compared by the test against an independent reference: AR with the same model on
one device (mesh None), run here first, and transformers' greedy tokens in the test process.
(On one device every method's greedy tokens equal AR's: tests/test_speculative.py.)
"""

from __future__ import annotations

import json
import pathlib
import sys
import threading

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before the backend starts

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import api, sharding  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

# A cost structure where drafting pays (tests/test_speculative.py's PAYS), so every speculative
# method drafts, verifies and rolls back instead of declining.
PROFILE = dict(device="synthetic", model="test", dtype="float32", c0=1e-4, a0=1e-3, a1=0.0,
               m=1e-3, v0=0.0, v1=0.0, search_c0=0.0)
CONFIGS = {
    "ar": None,
    "knapspec": ks.KnapSpecConfig(interval=4, n_ref=8, threshold=0.01, margin=-0.99,
                                  search_budget=100.0),
    "del": ks.DelConfig(interval=4, n_ref=8, threshold=0.01, min_exit=1),
    "clasp": ks.ClaspConfig(n_skip=1, gamma=3, threshold=0.01, interval=2),
    "fixed": ks.FixedConfig(gamma=3, threshold=0.01),
}


class Compiles:
  """XLA backend compiles (jit, AOT and eager ops alike; a persistent-cache read counts too)."""

  EVENTS = ("/jax/core/compile/backend_compile_duration",
            "/jax/compilation_cache/cache_retrieval_time_sec")

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()
    jax.monitoring.register_event_duration_secs_listener(self)

  def __call__(self, event: str, duration: float, **kwargs):
    if event in self.EVENTS:
      with self._lock:
        self.count += 1


COMPILES = Compiles()


def run(model, ids, new: int, method: str) -> dict:
  config = CONFIGS[method]
  options = {} if config is None else {"config": config}
  out = api.generate(model, ids, new, method=method, ignore_eos=True, **options)
  return {"tokens": out.output_ids, "compile_in_decode_s": out.stats["compile_in_decode_s"]}


def load(path: str, tp: int | None, **kwargs) -> api.Model:
  mesh = None if tp is None else sharding.make_mesh(tp)
  model = api.load_model(path, use_cache=False, mesh=mesh, **kwargs)
  model.profile = LatencyProfile(n_layers=model.cfg.n_layers, **PROFILE)
  return model


def placement(model: api.Model) -> dict:
  """Per-device shapes of every weight of layer 0, the top-level weights and a KV cache layer,
  as the first device holds them, and how many devices hold each."""
  shard = lambda a: {"shape": list(a.addressable_shards[0].data.shape),
                     "devices": len(a.sharding.device_set)}
  cache = KVCache.create(model.cfg, np.float32, sharding=model.cache_sharding)
  top = {k: shard(v) for k, v in model.params.items() if k != "layers"}
  return {"layer": {k: shard(v) for k, v in model.params["layers"][0].items()}, **top,
          "cache": shard(cache.k[0])}


def generate(spec: dict) -> dict:
  """AR on one device, then every method under each tp; for the methods whose programs are all
  known before decoding (ar, fixed), a second generation after the first's warm-up, counting
  every XLA compile it triggers."""
  path, ids = spec["model"], np.asarray(spec["prompt"])
  one = load(path, None)
  result = {"single": run(one, ids, spec["new"], "ar")}
  del one
  for tp in spec["tps"]:
    model = load(path, tp)
    got = {"placement": placement(model)}
    got["methods"] = {m: run(model, ids, spec["new"], m) for m in spec["methods"]}
    for m in ("ar", "fixed"):
      before = COMPILES.count
      again = run(model, ids, spec["new"], m)
      got[f"{m}_again"] = {**again, "xla_compiles": COMPILES.count - before}
    result[f"tp{tp}"] = got
    model.compiled = None
    jax.clear_caches()
  return result


def pallas(spec: dict) -> dict:
  """AR and the fixed drafting method (its verify windows through the kernel too) with the
  Pallas attention kernel (Pallas's interpreter on CPU) under each tp, and AR with XLA's
  attention on one device."""
  ids = np.asarray(spec["prompt"])
  out = {}
  for tp in spec["tps"]:
    model = load(spec["model"], tp, attention="pallas", window_attention="pallas")
    for method in ("ar", "fixed"):
      out[f"tp{tp}_{method}"] = run(model, ids, spec["new"], method)["tokens"]
  out["single_xla"] = run(load(spec["model"], None), ids, spec["new"], "ar")["tokens"]
  return out


def measured(spec: dict) -> dict:
  """KnapSpec under tp with no stored profile: the profile is measured on the split model at
  first use (latency.measure: every skip mask's draft steps, verifies, the search), as a user's
  first speculative generation does. Its tokens, and AR's on one device."""
  ids = np.asarray(spec["prompt"])
  mesh = sharding.make_mesh(spec["tp"])
  model = api.load_model(spec["model"], use_cache=False, mesh=mesh)
  config = ks.KnapSpecConfig(interval=4, n_ref=8, threshold=0.01)
  out = api.generate(model, ids, spec["new"], method="knapspec", ignore_eos=True, config=config)
  single = run(load(spec["model"], None), ids, spec["new"], "ar")["tokens"]
  return {"tokens": out.output_ids, "single": single, "profile": model.profile.model,
          "step_samples": len(model.profile.step_samples)}


def errors(spec: dict) -> dict:
  """The messages of requests a mesh cannot serve."""
  attempts = {
      "devices": lambda: sharding.make_mesh(3),
      "too_many": lambda: sharding.make_mesh(16),
      "heads": lambda: api.load_model(spec["undivided"], use_cache=False,
                                      mesh=sharding.make_mesh(8)),
      "fuse": lambda: api.load_model(spec["model"], use_cache=False, fuse=True,
                                     mesh=sharding.make_mesh(2)),
      "not_a_mesh": lambda: api.load_model(spec["model"], use_cache=False, mesh=2),
  }
  out = {}
  for name, attempt in attempts.items():
    try:
      attempt()
      out[name] = None
    except Exception as e:  # the test asserts on the type and message
      out[name] = {"type": type(e).__name__, "message": str(e)}
  return out


if __name__ == "__main__":
  mode, spec = sys.argv[1], json.loads(sys.argv[2])
  print(json.dumps({"generate": generate, "pallas": pallas, "measured": measured,
                    "errors": errors}[mode](spec)))
