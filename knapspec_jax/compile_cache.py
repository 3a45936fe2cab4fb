"""Ahead-of-time compiled programs, one per (program, static configuration, shapes).

Every device program of the project (prefill chunk, AR segment, speculation segment, knapsack
search) is compiled through `CompileCache.get`, so a configuration seen before costs a dict
lookup and the cache can report exactly how many compiles a run triggered and what they cost.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import jax


def _shape_key(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return (str(treedef),) + tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


@dataclasses.dataclass
class CompileStats:
  compiles: int = 0
  compile_s: float = 0.0
  hits: int = 0


class CompileCache:
  """Maps (name, static kwargs, argument shapes) to a compiled executable."""

  def __init__(self):
    self._compiled: dict[Any, Any] = {}
    self._lock = threading.Lock()
    self.stats = CompileStats()

  def get(self, name: str, fn: Callable, args: tuple, static: dict,
          donate_argnums: tuple[int, ...] = ()):
    """Returns fn compiled for these static kwargs and the shapes of `args` (arrays or
    ShapeDtypeStructs). The compiled callable takes `args` positionally."""
    key = (name, tuple(sorted(static.items())), _shape_key(args))
    with self._lock:
      hit = self._compiled.get(key)
      if hit is not None:
        self.stats.hits += 1
        return hit
    start = time.perf_counter()
    jitted = jax.jit(lambda *a: fn(*a, **static), donate_argnums=donate_argnums)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args)
    compiled = jitted.lower(*abstract).compile()
    elapsed = time.perf_counter() - start
    with self._lock:
      self._compiled.setdefault(key, compiled)
      self.stats.compiles += 1
      self.stats.compile_s += elapsed
      return self._compiled[key]

  def contains(self, name: str, args: tuple, static: dict) -> bool:
    return (name, tuple(sorted(static.items())), _shape_key(args)) in self._compiled

  def __len__(self) -> int:
    return len(self._compiled)
