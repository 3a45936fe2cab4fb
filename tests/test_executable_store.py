"""The executable store (compile_cache.executable_store_dir): a second process running the same
generation loads the project's compiled programs from disk, traces none of them and compiles
nothing, and decodes the same tokens.

Each generation runs in a fresh Python process with a tiny random Llama, AR and then a fixed
draft (prefill, AR and speculation programs: donated decode states, DecodeState pytrees). The
reference is a process with every on-disk cache off (KNAPSPEC_XLA_CACHE=0), whose programs are
traced and compiled from scratch; a fixed draft decodes greedily, so it must give AR's tokens.
Which programs were traced is read from JAX's own events (jaxpr_trace_duration, by function
name: compile_cache names each jitted program after its statics class), not from our stats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from knapspec_jax import compile_cache, decoding
from knapspec_jax.config import ModelConfig

REPO = pathlib.Path(__file__).resolve().parents[1]

_GENERATE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
jax.config.update("jax_num_cpu_devices", int(sys.argv[2]))
traced = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, s, fun_name=None, **_: traced.append(fun_name)
    if event == "/jax/core/compile/jaxpr_trace_duration" else None)
import knapspec_jax as ks
from knapspec_jax import api, compile_cache, model as model_lib
from knapspec_jax.config import ModelConfig
from knapspec_jax.latency import LatencyProfile
cfg = ModelConfig(arch="llama", vocab_size=256, d_model=64, d_ff=128, n_layers=4, n_heads=4,
                  n_kv_heads=2, head_dim=16, max_seq_len=256)
params = model_lib.init_random_params(cfg, jax.random.PRNGKey(0), scale=0.5)
model = api.Model(cfg, params, None, (), "float32", "tiny")
model.profile = LatencyProfile(device="synthetic", model="tiny", dtype="float32", n_layers=4,
                               c0=1e-4, a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)  # drafts pay
out = {}
methods = (("ar", {}), ("fixed", dict(config=ks.FixedConfig(gamma=3))))
for method, options in methods[:int(sys.argv[3])]:
  r = api.generate(model, np.arange(1, 20), 16, method=method, ignore_eos=True, **options)
  out[method] = dict(tokens=r.output_ids, compile_s=r.compile_s, load_s=r.load_s)
stats = model.compiled.stats
print(json.dumps(dict(out=out, compiles=stats.compiles, loaded=stats.loaded,
                      programs=sorted({type(p).__name__ for p in model.compiled.programs()}),
                      traced=[n for n in traced if n in compile_cache.PROGRAMS],
                      store=str(compile_cache.executable_store_dir()))))
"""


def _run(cache: pathlib.Path, devices: int = 1, methods: int = 2, **env) -> dict:
  """One process's generations (the first `methods` of AR and the fixed draft) on `devices`
  CPU devices."""
  env = {**os.environ, "KNAPSPEC_CACHE": str(cache), "KNAPSPEC_XLA_CACHE": "1",
         "KNAPSPEC_EXEC_CACHE": "1", "JAX_PLATFORMS": "cpu", **env}
  proc = subprocess.run([sys.executable, "-c", _GENERATE, str(REPO), str(devices), str(methods)],
                        env=env, text=True, capture_output=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(cache: pathlib.Path) -> dict[str, bytes]:
  store = cache / "executables"
  return {p.name: p.read_bytes() for p in store.iterdir()} if store.is_dir() else {}


def _whole(data: bytes) -> bool:
  """Whether an entry is one write of the store's format: sha256(body) + body."""
  return hashlib.sha256(data[32:]).digest() == data[:32]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  """The first process, from an empty cache (it compiles and stores), and the reference, with
  both on-disk caches off."""
  cache, off = tmp_path_factory.mktemp("store"), tmp_path_factory.mktemp("off")
  return cache, _run(cache), _run(off, KNAPSPEC_XLA_CACHE="0"), off


def test_second_process_loads_every_program(first_run, tmp_path):
  cache, first, reference, _ = first_run
  written = _entries(cache)
  shutil.copytree(cache, tmp_path / "cache")  # the module's other test damages its own copy
  second = _run(tmp_path / "cache")
  print(f"\n[executable store] first process: {first['compiles']} programs compiled in "
        f"{first['out']['ar']['compile_s'] + first['out']['fixed']['compile_s']:.2f} s; second: "
        f"{second['loaded']} loaded in "
        f"{second['out']['ar']['load_s'] + second['out']['fixed']['load_s']:.2f} s")
  assert reference["out"]["ar"]["tokens"] == reference["out"]["fixed"]["tokens"]
  assert len(set(reference["out"]["ar"]["tokens"])) > 4  # a model that says something
  assert first["out"] == {m: {**r, "tokens": reference["out"][m]["tokens"]}
                          for m, r in first["out"].items()}
  assert {"PrefillStatics", "ARSegmentStatics", "SpecSegmentStatics"} <= set(first["programs"])
  assert first["loaded"] == 0 and first["compiles"] >= 3 and len(first["traced"]) >= 3
  assert len(written) == first["compiles"] and all(_whole(d) for d in written.values())
  assert second["compiles"] == 0 and second["loaded"] == first["compiles"]
  assert second["traced"] == [], "a program was traced though its executable was stored"
  assert second["programs"] == first["programs"]
  for method in ("ar", "fixed"):
    assert second["out"][method]["tokens"] == reference["out"][method]["tokens"]
    assert second["out"][method]["compile_s"] == 0.0
  assert _entries(tmp_path / "cache") == written  # nothing rewritten


def test_damaged_entries_are_compiled_again(first_run):
  cache, first, reference, _ = first_run
  store = cache / "executables"
  damaged = sorted(store.iterdir())
  for i, path in enumerate(damaged):
    data = bytearray(path.read_bytes())
    if i % 2:
      data = data[:len(data) // 2]  # cut short
    else:
      # One flipped byte: at 70% of an entry XLA parses and loads it (measured), and nothing
      # would catch it but the entry's checksum.
      data[len(data) * 7 // 10] ^= 0xFF
    path.write_bytes(bytes(data))
  # Without JAX's cache the compiles are this process's own, which the store keeps (one that JAX's
  # cache answers is not stored: test_an_executable_from_jax_cache_is_not_stored_again).
  shutil.rmtree(cache / "xla")
  third = _run(cache)
  assert third["loaded"] == 0 and third["compiles"] == first["compiles"]
  for method in ("ar", "fixed"):
    assert third["out"][method]["tokens"] == reference["out"][method]["tokens"]
  assert all(_whole(d) for d in _entries(cache).values())  # each damaged entry rewritten whole
  assert {p.name for p in store.iterdir()} == {p.name for p in damaged}  # no temporary left


_SMOLLM2_AR = """
import json, sys
sys.path.insert(0, sys.argv[1])
import knapspec_jax as ks
model = ks.load_model(dtype="float32")
r = ks.generate(model, "Hello there", 12, method="ar", ignore_eos=True)
print(json.dumps(dict(tokens=r.output_ids, loaded=model.compiled.stats.loaded)))
"""


def test_an_executable_from_jax_cache_is_not_stored_again(tmp_path):
  """Where the store misses but JAX's persistent cache holds the program (the store's key follows
  the source, JAX's the HLO: an edit elsewhere in a program's module), the compile returns JAX's
  deserialized executable. Stored again, it loaded in the next process and failed at its first
  run there (SmolLM2's prefill on this CPU, jax 0.10: "NOT_FOUND: Function bitcast_gather_fusion
  not found"). It is not stored: every process decodes the first one's tokens."""
  env = {**os.environ, "KNAPSPEC_CACHE": str(tmp_path), "KNAPSPEC_XLA_CACHE": "1",
         "KNAPSPEC_EXEC_CACHE": "1", "JAX_PLATFORMS": "cpu"}

  def run() -> dict:
    proc = subprocess.run([sys.executable, "-c", _SMOLLM2_AR, str(REPO)], env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

  first = run()
  written = _entries(tmp_path)
  assert written
  for name, data in written.items():  # the store misses (here: damaged), JAX's cache holds them
    (tmp_path / "executables" / name).write_bytes(data[:len(data) // 2])
  second, third = run(), run()
  assert second["loaded"] == 0 and _entries(tmp_path) == {}  # nothing stored, damage removed
  assert second["tokens"] == third["tokens"] == first["tokens"]


def test_one_device_programs_of_a_process_with_eight(first_run, tmp_path):
  """With 8 CPU devices (tests/sharding_worker.py's setup) a program without a mesh still runs
  on one: loaded for all 8, it expected 8 shards of each argument (measured, before the entry
  kept its devices). The 1-device entries are not loaded there (the device count is keyed)."""
  _, _, reference, _ = first_run
  shutil.copytree(first_run[0], tmp_path / "cache")
  first = _run(tmp_path / "cache", devices=8, methods=1)
  second = _run(tmp_path / "cache", devices=8, methods=1)
  assert first["loaded"] == 0 and first["compiles"] >= 2
  assert second["compiles"] == 0 and second["loaded"] == first["compiles"]
  assert first["out"]["ar"]["tokens"] == second["out"]["ar"]["tokens"] == \
      reference["out"]["ar"]["tokens"]


def test_cache_off_writes_nothing(first_run):
  _, _, reference, off = first_run
  assert reference["store"] == "None" and reference["loaded"] == 0
  assert not (off / "executables").exists() and not (off / "xla").exists()


# ----------------------------------------------------------------------------- the store's key

_CFG = ModelConfig(arch="llama", vocab_size=64, d_model=32, d_ff=64, n_layers=2, n_heads=2,
                   n_kv_heads=1, head_dim=16, max_seq_len=64)


def _args(n: int):
  return ({"w": jax.ShapeDtypeStruct((n, 4), jnp.float32)}, jax.ShapeDtypeStruct((n,), jnp.int32))


def test_key_names_statics_shapes_and_structure():
  prog = decoding.PrefillStatics(_CFG, 32)
  key = compile_cache.store_key(prog, _args(8))
  assert key is not None and key == compile_cache.store_key(decoding.PrefillStatics(_CFG, 32),
                                                             _args(8))
  others = [compile_cache.store_key(decoding.PrefillStatics(_CFG, 64), _args(8)),
            compile_cache.store_key(
                decoding.PrefillStatics(dataclasses.replace(_CFG, attention="pallas"), 32),
                _args(8)),
            compile_cache.store_key(prog, _args(16)),
            compile_cache.store_key(prog, ({"v": _args(8)[0]["w"]}, _args(8)[1])),
            compile_cache.store_key(prog, (_args(8)[0], jax.ShapeDtypeStruct((8,), jnp.int16)))]
  assert None not in others and len({key, *others}) == len(others) + 1


_SCRIPT_PROGRAM = """
import dataclasses
from knapspec_jax import compile_cache

@compile_cache.program
@dataclasses.dataclass(frozen=True)
class ScriptStatics:
  n: int
  donate_argnums = ()

  def run(self, x):
    return x * {factor}
"""


def test_key_follows_the_source(tmp_path, monkeypatch):
  """An edited file (the package's, or the script that defines the statics class) gives another
  key; a file edited after import, whose code the process does not run, gives none."""
  script = tmp_path / "script_program.py"
  script.write_text(_SCRIPT_PROGRAM.format(factor=2))
  monkeypatch.syspath_prepend(str(tmp_path))
  import script_program
  monkeypatch.setattr(compile_cache, "IMPORTED_AT", time.time() + 1)
  args = (jax.ShapeDtypeStruct((3,), jnp.float32),)
  try:
    key = compile_cache.store_key(script_program.ScriptStatics(1), args)
    assert key is not None
    script.write_text(_SCRIPT_PROGRAM.format(factor=3))
    edited = compile_cache.store_key(script_program.ScriptStatics(1), args)
    assert edited is not None and edited != key
    package_key = compile_cache.store_key(decoding.PrefillStatics(_CFG, 32), _args(8))
    real_digest = compile_cache.file_digest
    monkeypatch.setattr(compile_cache, "file_digest", lambda f: (
        "edited" if f.name == "model.py" else real_digest(f)))
    assert compile_cache.store_key(decoding.PrefillStatics(_CFG, 32), _args(8)) != package_key
    monkeypatch.setattr(compile_cache, "file_digest", real_digest)
    monkeypatch.setattr(compile_cache, "IMPORTED_AT", time.time() - 3600)
    os.utime(script)  # edited now, an hour after "import"
    assert compile_cache.store_key(script_program.ScriptStatics(1), args) is None
  finally:
    compile_cache.PROGRAMS.pop("ScriptStatics", None)
    sys.modules.pop("script_program", None)


def test_load_refuses_another_keys_entry(tmp_path):
  """An entry read under another key (a sha256 collision of the file name, or a hand-copied
  file) is not loaded."""
  prog = decoding.PrefillStatics(_CFG, 32)
  compiled = jax.jit(lambda x: x + 1).lower(jax.ShapeDtypeStruct((3,), jnp.float32)).compile()
  path = tmp_path / "entry.jaxexe"
  key = compile_cache.store_key(prog, _args(8))
  assert compile_cache.save_entry(path, key, compiled)
  loaded = compile_cache.load_entry(path, key)
  assert loaded is not None and float(loaded(jnp.ones(3, jnp.float32))[0]) == 2.0
  assert compile_cache.load_entry(path, key + " ") is None
  assert compile_cache.load_entry(tmp_path / "absent.jaxexe", key) is None
