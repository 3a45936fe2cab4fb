"""Ahead-of-time compiled programs, one per (program, static configuration, shapes).

Every device program of the project (prefill chunk, AR segment, speculation segment, knapsack
search) is compiled through `CompileCache.get`, so a configuration seen before costs a dict
lookup and the cache can report exactly how many compiles a run triggered and what they cost.

A program is named by its static settings: a frozen, hashable dataclass registered with
`@program` (decoding.ARSegmentStatics, speculative.SpecSegmentStatics, ...), whose `run` method
is the program over its array arguments, as gemma's SamplerLoop is its own static argument.
Every setting is a field with its default filled in, so two callers that ask for the same
program build equal keys however they spelled the request (when a request was a string name
and a dict of kwargs, a caller that left out a default and one that gave it compiled the same
program twice). A script's own program is a statics class of its own, registered the same way
(experiments/gpu/decode_variants.py).

A program seen by an earlier process costs a disk read instead of a compile: before its first
compile, `CompileCache` turns on JAX's persistent compilation cache in
`checkpoint.cache_dir() / "xla"` ($KNAPSPEC_CACHE, else ~/.cache/knapspec_jax), every program
cached whatever its compile time or size (JAX's thresholds are process-wide: eager ops' small
programs are cached too). Measured on the CPU with a tiny model (tests/test_persistent_cache.py):
3.3 s of warm-up compiles in a first process, 0.34 s in the second; on the H200, a
Qwen-1.5B-shaped generation's 13.1 s, then 1.55 s (BENCHMARKS.md 10.4). KNAPSPEC_XLA_CACHE=0
turns it off; a cache directory the user gave JAX (jax_compilation_cache_dir) is left as it is.

A compiled program is also run once before `get` returns it, when its statics say how
(`prime_args`: the decode loops): on the H200 the first call of a decode program cost 20-56 ms
more than every later one (experiments/gpu/first_call.py, BENCHMARKS.md 10.8), which a draft
compiled at warm-up paid inside its first timed window and which made a paying draft measure
slower than AR. One iteration of each loop on zero-filled state removes it; a call with no
iteration left about 5 ms of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp

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
  primed: int = 0  # programs run once right after their compile (Program.prime_args)
  background_compiles: int = 0
  background_compile_s: float = 0.0  # spent in the background thread (decoding went on)


class Program(Protocol):
  """The static settings of one compiled program (a frozen dataclass registered with `@program`):
  run(*args) is the program over its array arguments; donate_argnums, the arguments whose
  buffers it may reuse (a decode state or cache it replaces)."""

  donate_argnums: tuple[int, ...]

  def run(self, *args):
    ...

  # Optional: prime_args(args) -> args, given args whose donated (and abstract) arguments are
  # zero-filled, returns the arguments of one cheap call that runs every loop of the program at
  # least once; `get` makes that call right after compiling (see the module docstring).


PROGRAMS: dict[str, type] = {}  # class name -> the class, every program the package compiles


def program(cls: type) -> type:
  """Registers a frozen dataclass as a program's static settings: CompileCache compiles only
  registered programs, so tests/test_tpu_export.py, which exports each of PROGRAMS for TPU,
  sees every program the package can compile."""
  params = getattr(cls, "__dataclass_params__", None)
  if params is None or not params.frozen or not callable(getattr(cls, "run", None)):
    raise TypeError(f"{cls.__name__}: a program is a frozen dataclass with a run method")
  PROGRAMS[cls.__name__] = cls
  return cls


def _registered(prog) -> Program:
  """prog itself, or TypeError when it is not of a registered statics class."""
  if type(prog) not in PROGRAMS.values():
    raise TypeError(f"{type(prog).__name__} is not a registered program (@compile_cache."
                    "program)")
  return prog


def jit_program(prog: Program):
  """The jitted program `CompileCache.get` compiles: prog.run, taking its array arguments
  positionally (tests/test_tpu_export.py exports it for TPU). Named after the statics class, so
  that profiles and HLO dumps say which program they show."""
  run = lambda *args: prog.run(*args)
  run.__name__ = type(prog).__name__
  return jax.jit(run, donate_argnums=prog.donate_argnums)


def _prime(prog, compiled, args, abstract) -> bool:
  """Calls a just-compiled program once, if its statics define prime_args, with zeros in place
  of its donated arguments (the caller's buffers are left alone) and of any abstract leaf (a
  warm-up's state and counters), the caller's concrete arrays (the weights) as they are.
  Returns whether it ran."""
  prime_args = getattr(prog, "prime_args", None)
  if prime_args is None:
    return False
  zeros = lambda a: jnp.zeros(a.shape, a.dtype, device=getattr(a, "sharding", None))
  pick = lambda x, a: zeros(a) if isinstance(x, jax.ShapeDtypeStruct) else x
  call = tuple(jax.tree.map(zeros, abstract[i]) if i in prog.donate_argnums
               else jax.tree.map(pick, args[i], abstract[i]) for i in range(len(args)))
  jax.block_until_ready(compiled(*prime_args(call)))
  return True


class CompileCache:
  """Maps (program statics, argument shapes and shardings) to a compiled executable."""

  def __init__(self):
    self._compiled: dict[Any, Any] = {}
    self._pending: dict[Any, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self.stats = CompileStats()

  def get_async(self, prog: Program, args):
    """The compiled program if it is ready, else None after making sure a background thread is
    compiling it (XLA compiles outside the GIL, so decoding goes on meanwhile). Takes what `get`
    takes."""
    prog = _registered(prog)
    key = (prog, _shape_key(args))
    abstract, _ = _abstract(args)
    with self._lock:
      if key in self._compiled:
        self.stats.hits += 1
        return self._compiled[key]
      # One compile in flight per kind of program: a policy that changes its mind faster than
      # programs compile must not queue up programs it will never run.
      busy = any(type(k[0]) is type(prog) for k in self._pending)
      if key not in self._pending and not busy:
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(1, "knapspec-compile")
        self._pending[key] = self._executor.submit(self.get, prog, abstract)
        self._pending[key].add_done_callback(lambda _: self._pending.pop(key, None))
    return None

  def get(self, prog: Program, args):
    """The program (a registered statics object) compiled for the shapes and shardings of
    `args` (arrays or ShapeDtypeStructs); the compiled callable takes `args` positionally."""
    prog = _registered(prog)
    key = (prog, _shape_key(args))
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
    jitted = jit_program(prog)
    abstract, mesh = _abstract(args)
    if mesh is None:
      compiled = jitted.lower(*abstract).compile()
    else:  # GSPMD partitions the program from its inputs' shardings; kernels that cannot be
      # partitioned find the mesh in the context (sharding.map_over_heads)
      with jax.set_mesh(mesh):
        compiled = jitted.lower(*abstract).compile()
    primed = _prime(prog, compiled, args, abstract)
    elapsed = time.perf_counter() - start
    with self._lock:
      self.stats.primed += primed
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

  def contains(self, prog: Program, args: tuple) -> bool:
    """Whether `prog` is compiled for these arguments' shapes already (no compile, no wait)."""
    return (prog, _shape_key(args)) in self._compiled

  def programs(self) -> list:
    """The statics of every compiled program, once per compiled shape."""
    with self._lock:
      return [prog for prog, _ in self._compiled]

  def __len__(self) -> int:
    return len(self._compiled)
