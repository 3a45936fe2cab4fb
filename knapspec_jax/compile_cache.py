"""Ahead-of-time compiled programs, one per (program, static configuration, shapes).

Every device program of the project (prefill chunk, AR segment, speculation segment, knapsack
search) is compiled through `CompileCache.get`, so a configuration seen before costs a dict
lookup and the cache can report exactly how many compiles a run triggered and what they cost.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable

import jax


def _shape_key(args) -> tuple:
  """Structure, shapes and dtypes of the arguments (arrays and ShapeDtypeStructs alike). Hashed
  objects, not strings: the key is computed on every call in the decode loop (about 250 leaves
  with the parameters), where formatting each dtype cost 1.5 ms per call on the CPU."""
  leaves, treedef = jax.tree.flatten(args)
  return (treedef,) + tuple((tuple(x.shape), x.dtype) for x in leaves)


@dataclasses.dataclass
class CompileStats:
  compiles: int = 0
  compile_s: float = 0.0  # spent compiling in the caller's thread (it waited)
  hits: int = 0
  background_compiles: int = 0
  background_compile_s: float = 0.0  # spent in the background thread (decoding went on)


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
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
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
    """Returns fn compiled for these static kwargs and the shapes of `args` (arrays or
    ShapeDtypeStructs). The compiled callable takes `args` positionally."""
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
    start = time.perf_counter()
    jitted = jax.jit(lambda *a: fn(*a, **static), donate_argnums=donate_argnums)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
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

  def contains(self, name: str, args: tuple, static: dict) -> bool:
    return (name, tuple(sorted(static.items())), _shape_key(args)) in self._compiled

  def __len__(self) -> int:
    return len(self._compiled)
