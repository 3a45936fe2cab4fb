"""The on-disk compilation cache (compile_cache.persistent_cache_dir): a second process running
the same generation reads the project's programs from disk instead of compiling them.

Each run is a fresh Python process (an in-process check would hit JAX's in-memory caches) that
generates with a tiny random Llama and reports its compile time, the project's compiles and
the persistent-cache hits JAX itself records."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_GENERATE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
from knapspec_jax import api, compile_cache, model as model_lib
from knapspec_jax.config import ModelConfig
cfg = ModelConfig(arch="llama", vocab_size=256, d_model=64, d_ff=128, n_layers=2, n_heads=4,
                  n_kv_heads=2, head_dim=16, max_seq_len=512)
model = api.Model(cfg, model_lib.init_random_params(cfg, jax.random.PRNGKey(0)), None, (),
                  "float32", "tiny")
before = len(hits)
r = api.generate(model, np.arange(1, 20), 24, ignore_eos=True)
print(json.dumps(dict(compile_s=r.compile_s, compiles=model.compiled.stats.compiles,
                      hits=len(hits) - before, output=r.output_ids,
                      directory=compile_cache.persistent_cache_dir())))
"""


def _run(cache: pathlib.Path, **env) -> dict:
  env = {**os.environ, "KNAPSPEC_CACHE": str(cache), "KNAPSPEC_XLA_CACHE": "1",
         "KNAPSPEC_EXEC_CACHE": "0", "JAX_PLATFORMS": "cpu", **env}  # JAX's cache alone
  proc = subprocess.run([sys.executable, "-c", _GENERATE, str(REPO)], env=env, text=True,
                        capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(directory: pathlib.Path) -> set[str]:
  return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def test_second_process_reads_programs_from_disk(tmp_path):
  xla_dir = tmp_path / "xla"
  first = _run(tmp_path)
  written = _entries(xla_dir)
  second = _run(tmp_path)
  print(f"\n[persistent cache] compile_s: first process {first['compile_s']:.2f} s "
        f"({first['compiles']} programs, {first['hits']} disk hits), second "
        f"{second['compile_s']:.2f} s ({second['hits']} disk hits); {len(written)} entries")
  assert first["directory"] == second["directory"] == str(xla_dir)
  assert first["compiles"] == second["compiles"] >= 2  # prefill and the AR segment
  assert first["hits"] == 0
  assert second["hits"] >= second["compiles"]  # each of the project's programs came from disk
  assert _entries(xla_dir) == written  # ... so the second process wrote nothing new
  assert second["compile_s"] < 0.5 * first["compile_s"]
  assert second["output"] == first["output"]
  assert not (tmp_path / "executables").exists()  # KNAPSPEC_EXEC_CACHE=0: no executable store


def test_opt_out_writes_nothing(tmp_path):
  result = _run(tmp_path, KNAPSPEC_XLA_CACHE="0")
  assert result["directory"] is None and result["hits"] == 0
  assert not (tmp_path / "xla").exists()
