"""Ahead-of-time compiled programs, one per (program, static configuration, shapes).

Every device program of the project (prefill chunk, AR segment, speculation segment, knapsack
search) is compiled through `CompileCache.get`, so a configuration seen before costs a dict
lookup and the cache can report exactly how many compiles a run triggered and what they cost.

A program seen by an earlier process costs a disk read instead of a compile: before its first
compile, `CompileCache` turns on JAX's persistent compilation cache in
`checkpoint.cache_dir() / "xla"` ($KNAPSPEC_CACHE, else ~/.cache/knapspec_jax), every program
cached whatever its compile time or size (JAX's thresholds are process-wide: eager ops' small
programs are cached too). Measured on the CPU with a tiny model (tests/test_persistent_cache.py):
3.3 s of warm-up compiles in a first process, 0.34 s in the second; on the H200, a
Qwen-1.5B-shaped generation's 13.1 s, then 1.55 s (BENCHMARKS.md 10.4). KNAPSPEC_XLA_CACHE=0
turns it off; a cache directory the user gave JAX (jax_compilation_cache_dir) is left as it is.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Any, Callable

import jax

from knapspec_jax import checkpoint, sharding

PERSISTENT_CACHE_ENV = "KNAPSPEC_XLA_CACHE"  # "0", "off", "false" or "no": no on-disk cache
_persistent_lock = threading.Lock()
_persistent_dir: list = []  # the directory chosen, once per process ([None]: off)


def persistent_cache_dir() -> str | None:
  """Turns on JAX's on-disk compilation cache (once per process, see the module docstring) and
  returns its directory, or None when it is off. Later calls return the first answer."""
  with _persistent_lock:
    if not _persistent_dir:
      _persistent_dir.append(_enable_persistent_cache())
    return _persistent_dir[0]


def _enable_persistent_cache() -> str | None:
  if jax.config.jax_compilation_cache_dir:  # the user's own setting wins
    return jax.config.jax_compilation_cache_dir
  if os.environ.get(PERSISTENT_CACHE_ENV, "1").lower() in ("0", "off", "false", "no"):
    return None
  path = checkpoint.cache_dir() / "xla"
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  # JAX's defaults keep programs that compiled in under a second out of the cache: on a CPU
  # that is most of ours, and every new skip set is one.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_dir", str(path))
  return str(path)


def _shape_key(args) -> tuple:
  """Structure, shapes, dtypes and placements of the arguments (arrays and ShapeDtypeStructs
  alike). Hashed objects, not strings: the key is computed on every call in the decode loop
  (about 250 leaves with the parameters), where formatting each dtype cost 1.5 ms per call on
  the CPU. A placement is a split leaf's sharding, its mesh included, or None for a whole one
  (sharding.key_of): a program compiled for one mesh is never reused for another, and one device
  keys as it always did."""
  leaves, treedef = jax.tree.flatten(args)
  return (treedef,) + tuple((tuple(x.shape), x.dtype, sharding.key_of(x)) for x in leaves)


def _abstract(args):
  """args as ShapeDtypeStructs that keep their shardings, and the mesh they are split over (None
  on one device: then no sharding at all, the single-device path as before)."""
  mesh = sharding.mesh_of(args)
  return jax.tree.map(lambda x: sharding.abstract(x, mesh), args), mesh


@dataclasses.dataclass
class CompileStats:
  compiles: int = 0  # programs built: compiled, or read from the persistent cache (cheap)
  compile_s: float = 0.0  # spent compiling in the caller's thread (it waited)
  hits: int = 0
  background_compiles: int = 0
  background_compile_s: float = 0.0  # spent in the background thread (decoding went on)


def jit_program(fn: Callable, static: dict, donate_argnums: tuple[int, ...] = ()):
  """The jitted program `CompileCache.get` compiles: fn with the static kwargs bound, taking its
  array arguments positionally (tests/test_tpu_export.py exports it for TPU)."""
  return jax.jit(lambda *a: fn(*a, **static), donate_argnums=donate_argnums)


class CompileCache:
  """Maps (name, static kwargs, argument shapes) to a compiled executable."""

  def __init__(self):
    self._compiled: dict[Any, Any] = {}
    self._pending: dict[Any, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self.stats = CompileStats()

  def get_async(self, name: str, fn: Callable, args: tuple, static: dict,
                donate_argnums: tuple[int, ...] = ()):
    """The compiled program if it is ready, else None after making sure a background thread is
    compiling it (XLA compiles outside the GIL, so decoding goes on meanwhile)."""
    key = (name, tuple(sorted(static.items())), _shape_key(args))
    abstract, _ = _abstract(args)
    with self._lock:
      if key in self._compiled:
        self.stats.hits += 1
        return self._compiled[key]
      # One compile in flight per program name: a policy that changes its mind faster than
      # programs compile must not queue up programs it will never run.
      busy = any(k[0] == name for k in self._pending)
      if key not in self._pending and not busy:
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(1, "knapspec-compile")
        self._pending[key] = self._executor.submit(
            self.get, name, fn, abstract, static, donate_argnums)
        self._pending[key].add_done_callback(lambda _: self._pending.pop(key, None))
    return None

  def get(self, name: str, fn: Callable, args: tuple, static: dict,
          donate_argnums: tuple[int, ...] = ()):
    """Returns fn compiled for these static kwargs and the shapes and shardings of `args`
    (arrays or ShapeDtypeStructs). The compiled callable takes `args` positionally."""
    key = (name, tuple(sorted(static.items())), _shape_key(args))
    in_background = threading.current_thread().name.startswith("knapspec-compile")
    with self._lock:
      hit = self._compiled.get(key)
      if hit is not None:
        self.stats.hits += 1
        return hit
      pending = None if in_background else self._pending.get(key)
    if pending is not None:  # already being compiled in the background: wait for it
      start = time.perf_counter()
      result = pending.result()
      with self._lock:
        self.stats.compile_s += time.perf_counter() - start
      return result
    persistent_cache_dir()
    start = time.perf_counter()
    jitted = jit_program(fn, static, donate_argnums)
    abstract, mesh = _abstract(args)
    if mesh is None:
      compiled = jitted.lower(*abstract).compile()
    else:  # GSPMD partitions the program from its inputs' shardings; kernels that cannot be
      # partitioned find the mesh in the context (sharding.map_over_heads)
      with jax.set_mesh(mesh):
        compiled = jitted.lower(*abstract).compile()
    elapsed = time.perf_counter() - start
    with self._lock:
      self._compiled.setdefault(key, compiled)
      if in_background:
        self.stats.background_compiles += 1
        self.stats.background_compile_s += elapsed
      else:
        self.stats.compiles += 1
        self.stats.compile_s += elapsed
      return self._compiled[key]

  def wait_background(self) -> float:
    """Waits until no program compiles in the background; returns the seconds waited. A
    benchmark calls it before each timed run, so that no run shares the host with a compile
    that another run started."""
    start = time.perf_counter()
    while True:
      with self._lock:
        pending = [f for f in self._pending.values() if not f.done()]
      if not pending:
        return time.perf_counter() - start
      concurrent.futures.wait(pending)

  def contains(self, name: str, args: tuple, static: dict) -> bool:
    return (name, tuple(sorted(static.items())), _shape_key(args)) in self._compiled

  def __len__(self) -> int:
    return len(self._compiled)
