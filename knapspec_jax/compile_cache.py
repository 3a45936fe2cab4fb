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

JAX's cache spares XLA's compile but not the tracing and lowering before it, so the compiled
executables themselves are kept too, in the executable store `checkpoint.cache_dir() /
"executables"` (jax.experimental.serialize_executable; one file per program and shapes, written
through a temporary file and os.replace, with its pytree structures): a later process loads a
program without tracing it. An entry is named by the sha256 of everything that decides the
executable (`store_key`): the statics' class and repr, the arguments' structure, shapes and
dtypes, JAX's and jaxlib's versions, the backend, platform version, device kind and count, the
XLA flags, and a digest of the source, every .py file of the package and the file that defines
the statics class, so an edited model or script never loads an executable built from the old
code. An entry that cannot be used (damaged: each file carries a sha256 of its bytes; written
for another key; refused by XLA; loaded but failing its priming call) is compiled again and
overwritten, silently. An executable that JAX's cache returned is not stored (its entry, if any,
is removed): serialized a second time it loaded in the next process but failed at its first
run (SmolLM2's prefill on the CPU, tests/test_executable_store.py). Programs split over a mesh
are not stored (compiled as before: the store is not tested with them); a one-device program of
a process with several devices is. Measured
on the 2-core CPU with a SmolLM2-shaped float32 AR generation (`python experiments/gpu/
compile_twice.py --model=smollm2 --dtype=float32 --tokens=8`, results/cpu/compile_twice/): the
second process's warm-up compiled nothing (compile_s 0, none of the project's programs traced)
and loaded its 2 programs in 0.73 s (0.18 s of it the priming call below), where with JAX's
cache alone (--store=0) it took 1.15 s (tracing 0.35 s, lowering 0.17 s, 20 disk reads 0.48 s);
the first process, 3.72 s with the store, 3.84 s without (0.15 s to serialize and write).
CompileStats counts loads apart from compiles (loaded, load_s) and api.generate reports load_s
beside compile_s. KNAPSPEC_XLA_CACHE=0 turns the store off with JAX's cache, KNAPSPEC_EXEC_CACHE=0
the store alone (tests/conftest.py does, for tests that count compiles). Loading unpickles the
file: the store is as trusted as the rest of the cache directory.

A program can also be compiled by another process, the compile worker (`CompileWorker`, started
by `get_async(..., "process")` or `start_worker`): a Python interpreter of its own that receives
a program's statics and argument shapes, compiles it with JAX's own cache off and writes it to
the store, while the decoding process decodes on; that process then loads it in its background
thread. Neither tracing nor XLA runs in the decoding process, so its host loop keeps the GIL and
the cores it needs: on the H200 AR ran 0.2-2.2% slower beside the worker's compiles and 3-6%
slower during the 0.9-1.7 s loads, and a new skip set cost the decoding thread 4-15 ms
(BENCHMARKS.md 10.27). The worker's key is computed in its own process from the same source,
settings and device; a job whose key differs, or that the worker cannot import (a statics class
of a script run as __main__), is compiled in a background thread instead, with a message.

A compiled (or loaded) program is also run once before `get` returns it, when its statics say
how (`prime_args`: the decode loops): on the H200 the first call of a decode program cost 20-56
ms more than every later one (experiments/gpu/first_call.py, BENCHMARKS.md 10.8), which a draft
compiled at warm-up paid inside its first timed window and which made a paying draft measure
slower than AR. One iteration of each loop on zero-filled state removes it; a call with no
iteration left about 5 ms of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import pickle
import subprocess
import sys
import threading
import time
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import jaxlib
from jax.experimental import serialize_executable

from knapspec_jax import checkpoint, sharding

PERSISTENT_CACHE_ENV = "KNAPSPEC_XLA_CACHE"  # "0", "off", "false" or "no": no on-disk cache
EXECUTABLE_STORE_ENV = "KNAPSPEC_EXEC_CACHE"  # the same values: no executable store alone
_OFF = ("0", "off", "false", "no")
_persistent_lock = threading.Lock()
_persistent_dir: list = []  # the directory chosen, once per process ([None]: off)
_store_dir: list = []  # the executable store's, likewise


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
  if os.environ.get(PERSISTENT_CACHE_ENV, "1").lower() in _OFF:
    return None
  path = _cache_subdir("xla")
  if path is None:
    return None
  # JAX's defaults keep programs that compiled in under a second out of the cache: on a CPU
  # that is most of ours, and every new skip set is one.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_dir", str(path))
  return str(path)


def executable_store_dir() -> pathlib.Path | None:
  """The executable store's directory, checkpoint.cache_dir() / "executables", or None when it
  is off: KNAPSPEC_XLA_CACHE=0 turns it off with JAX's cache, KNAPSPEC_EXEC_CACHE=0 alone (the
  test suite's setting, so that its tests that count compiles see compiles). Decided once per
  process, as persistent_cache_dir is."""
  with _persistent_lock:
    if not _store_dir:
      _store_dir.append(_open_store())
    return _store_dir[0]


def _open_store() -> pathlib.Path | None:
  if any(os.environ.get(env, "1").lower() in _OFF
         for env in (PERSISTENT_CACHE_ENV, EXECUTABLE_STORE_ENV)):
    return None
  return _cache_subdir("executables")


def _cache_subdir(name: str) -> pathlib.Path | None:
  """checkpoint.cache_dir() / name, created; None where it cannot be (a read-only home)."""
  path = checkpoint.cache_dir() / name
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  return path


_PACKAGE = pathlib.Path(__file__).resolve().parent
IMPORTED_AT = time.time()  # a source file changed after this is not the code this process runs
_digests: dict[tuple, str] = {}  # (path, mtime_ns, size) -> sha256 of the file


def file_digest(path: pathlib.Path) -> str | None:
  """sha256 of a file's bytes; None when it cannot be read or changed after this module was
  imported (the process then runs older code than the file holds)."""
  try:
    st = path.stat()
    if st.st_mtime > IMPORTED_AT:
      return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _digests:
      _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]
  except OSError:
    return None


def _source_digest(cls: type) -> str | None:
  """A digest of the code that builds a program of class cls: every .py file of the package
  (the model, kernels, loops the program calls) and the file that defines cls (a script's own
  program), so that an edited file never loads an executable built from the old one. None (the
  program is then not stored) when a file cannot be read or was edited since import, or cls
  has no file (defined in a notebook cell)."""
  module_file = getattr(sys.modules.get(cls.__module__), "__file__", None)
  if module_file is None:
    return None
  files = sorted(_PACKAGE.rglob("*.py")) + [pathlib.Path(module_file).resolve()]
  digests = [file_digest(f) for f in files]
  if None in digests:
    return None
  return hashlib.sha256("\n".join(f"{f} {d}" for f, d in zip(files, digests)).encode()
                        ).hexdigest()


def _environment() -> str:
  """What else decides the executable: JAX's and jaxlib's versions, the backend, its device kind
  and count, the XLA flags, and the JAX settings that change what a program traces to."""
  device = jax.devices()[0]
  settings = ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_device",
              "jax_numpy_rank_promotion", "jax_threefry_partitionable")
  return repr((jax.__version__, jaxlib.__version__, device.client.platform,
               device.client.platform_version, device.device_kind, jax.device_count(),
               jax.process_count(), os.environ.get("XLA_FLAGS", ""),
               tuple(str(getattr(jax.config, name, None)) for name in settings)))


# 2: since session 14 no entry holds an executable that JAX's persistent cache returned (see
# _jax_cache_hits); format 1's entries may, and are not loaded.
_STORE_FORMAT = "knapspec executable 2"

# Per thread, how many compiles JAX's persistent cache answered (its "cache_hits" event, recorded
# in the compiling thread). An executable it returned is not stored again: serialized a second
# time it loaded in the next process and failed at its first run there (SmolLM2's prefill on the
# CPU, jax 0.10: "NOT_FOUND: Function bitcast_gather_fusion not found"). That happens where the
# store misses and JAX's cache holds the program: the store's key follows the source, JAX's the
# HLO, so an edit elsewhere in a program's module is enough.
_jax_cache_hits = threading.local()


def _jax_cache_hit_count() -> int:
  return getattr(_jax_cache_hits, "count", 0)


def _count_jax_cache_hit(event: str, **_):
  if event == "/jax/compilation_cache/cache_hits":
    _jax_cache_hits.count = _jax_cache_hit_count() + 1


jax.monitoring.register_event_listener(_count_jax_cache_hit)


def store_key(prog, args) -> str | None:
  """The text that names `prog` compiled for `args` in the executable store (its sha256 names
  the file; the entry keeps the text and a load compares it): the statics' class and repr, the
  arguments' structure, shapes and dtypes (all a single-device compile sees of them), the
  environment and the source digest. None when the program is not stored: a statics repr or
  a pytree that names an object's address, a placed-over-devices leaf, unknown source."""
  leaves, treedef = jax.tree.flatten(args)
  if any(sharding.key_of(x) is not None for x in leaves):
    return None
  text, tree = repr(prog), str(treedef)
  source = _source_digest(type(prog))
  if " at 0x" in text + tree or source is None:
    return None
  cls = type(prog)
  shapes = " ".join(f"{jnp.dtype(x.dtype).name}{list(x.shape)}" for x in leaves)
  return "\n".join((_STORE_FORMAT, f"{cls.__module__}.{cls.__qualname__}", text, tree, shapes,
                    _environment(), f"options {sorted(compiler_options(prog).items())}", source))


def _entry_path(store: pathlib.Path, key: str) -> pathlib.Path:
  return store / (hashlib.sha256(key.encode()).hexdigest() + ".jaxexe")


def load_entry(path: pathlib.Path, key: str):
  """The executable stored at path under key, or None: no entry, or one that cannot be used
  (cut short, damaged, or another key's), which the caller compiles and overwrites. The file is
  a sha256 of its body, then the body: damaged bytes are caught before pickle or XLA read them
  (a flipped bit in machine code would load and run)."""
  try:
    data = path.read_bytes()
  except OSError:
    return None
  body = data[32:]
  if hashlib.sha256(body).digest() != data[:32]:
    return None
  try:
    entry = pickle.loads(body)
    devices = [d for d in jax.devices() if d.id in entry["devices"]]
    if entry["key"] != key or len(devices) != len(entry["devices"]):
      return None
    return serialize_executable.deserialize_and_load(entry["payload"], entry["in_tree"],
                                                     entry["out_tree"], execution_devices=devices)
  except Exception:  # noqa: BLE001 anything an unusable entry raises means: compile instead
    return None


def save_entry(path: pathlib.Path, key: str, compiled) -> bool:
  """Writes a compiled program under key, through a temporary file and os.replace (a reader sees
  the old entry or the new one, never half of one); False when it cannot be serialized (a
  program that closes over constants) or written."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
  try:
    payload, in_tree, out_tree = serialize_executable.serialize(compiled)
    # The devices it runs on: loaded for all of the backend's (the default), a one-device program
    # of a process with 8 CPU devices expected 8 shards of each argument.
    devices = sorted({d.id for s in jax.tree.leaves(compiled.input_shardings)
                      for d in s.device_set})
    body = pickle.dumps(dict(key=key, payload=payload, in_tree=in_tree, out_tree=out_tree,
                             devices=devices))
    tmp.write_bytes(hashlib.sha256(body).digest() + body)
    os.replace(tmp, path)
    return True
  except Exception:  # noqa: BLE001 a program that cannot be stored still runs
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    return False


def shape_key(args) -> tuple:
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
  """What getting the programs cost. A program comes either from a compile (traced, lowered and
  built by XLA, or read from JAX's persistent cache: cheap, but still traced and lowered) or
  from the executable store (loaded, nothing traced); the seconds are the caller's wait, its
  priming call included (a first-call cost that compiles and loads alike pay)."""

  compiles: int = 0  # programs compiled (or read from JAX's persistent cache)
  compile_s: float = 0.0  # spent compiling in the caller's thread (it waited)
  loaded: int = 0  # programs loaded from the executable store
  load_s: float = 0.0  # spent loading them in the caller's thread
  hits: int = 0
  primed: int = 0  # programs run once right after their compile or load (Program.prime_args)
  prime_s: float = 0.0  # of the seconds here (either thread), the priming calls'
  background_compiles: int = 0
  background_compile_s: float = 0.0  # spent in the background thread (decoding went on)
  background_loaded: int = 0
  background_load_s: float = 0.0

  @property
  def waited_s(self) -> float:
    """Seconds the caller waited for programs, compiled or loaded: what a timed window that
    fetched a program subtracts."""
    return self.compile_s + self.load_s


class Program(Protocol):
  """The static settings of one compiled program (a frozen dataclass registered with `@program`):
  run(*args) is the program over its array arguments; donate_argnums, the arguments whose
  buffers it may reuse (a decode state or cache it replaces)."""

  donate_argnums: tuple[int, ...]

  def run(self, *args):
    ...

  # Optional: compiler_options, a class attribute of (XLA option, value) pairs this program is
  # compiled with (`compiler_options` below passes on those for the backend at hand).
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


def compiler_options(prog: Program) -> dict:
  """The XLA options prog's statics ask for (their class's compiler_options pairs), without
  those of another backend: xla_gpu_* options go to GPU compiles only."""
  options = dict(getattr(prog, "compiler_options", ()))
  if jax.default_backend() != "gpu":
    options = {k: v for k, v in options.items() if not k.startswith("xla_gpu_")}
  return options


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


def _build(prog: Program, args, abstract, mesh, load: bool = True) -> tuple[Any, bool]:
  """(the program compiled for args, whether it was loaded from the executable store; load=False:
  compiled whatever is stored, and stored). A program split over a mesh is always compiled: the
  store keeps single-device programs only."""
  persistent_cache_dir()
  store = executable_store_dir() if mesh is None else None
  key = store_key(prog, args) if store is not None else None
  path = _entry_path(store, key) if key is not None else None
  if path is not None and load:
    compiled = load_entry(path, key)
    if compiled is not None:
      return compiled, True
  jitted = jit_program(prog)
  options = compiler_options(prog) or None
  hits = _jax_cache_hit_count()
  if mesh is None:
    compiled = jitted.lower(*abstract).compile(compiler_options=options)
  else:  # GSPMD partitions the program from its inputs' shardings; kernels that cannot be
    # partitioned find the mesh in the context (sharding.map_over_heads)
    with jax.set_mesh(mesh):
      compiled = jitted.lower(*abstract).compile(compiler_options=options)
  if path is not None and _jax_cache_hit_count() == hits:
    save_entry(path, key, compiled)  # compiled here, not JAX's cache's (see _jax_cache_hits)
  elif path is not None:  # JAX's: not stored, and an unusable entry there is not read again
    path.unlink(missing_ok=True)
  return compiled, False


BACKGROUND_MODES = ("thread", "process")


def background_mode(value) -> str | None:
  """Where a program compiles while decoding goes on: None (in the caller's thread, which
  waits), "thread" (a background thread of this process) or "process" (a compile worker
  process, CompileWorker). False and None mean None, True means "thread"."""
  if value is None or value is False:
    return None
  if value is True:
    return "thread"
  if value not in BACKGROUND_MODES:
    raise ValueError(f"background compile must be False, True or one of {BACKGROUND_MODES}, "
                     f"got {value!r}")
  return value


_WORKER_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                    "jax_threefry_partitionable", "jax_num_cpu_devices")


AUTOTUNE_CACHE = "xla_gpu_per_fusion_autotune_cache_dir"  # XLA's option and JAX's subfolder


def shared_xla_caches() -> dict:
  """XLA options that point a compile at the XLA caches kept beside this process's persistent
  cache (those jax_persistent_cache_enable_xla_caches names; {} when that cache is off): the
  per-fusion autotuning results. JAX sets them itself only where its cache is on, and the compile
  worker turns its cache off (serve_worker), so without them the worker autotunes every GEMM and
  fusion of a program again, running candidate kernels on the GPU the decoding process is using;
  with them it reads the results the decoding process measured (the same choices) and autotunes
  only what is new. Not yet measured on the H200 (BENCHMARKS.md 10.29: the decoding beside the
  worker's compile ran 7% slower, 0.10 s a switch)."""
  cache = persistent_cache_dir()
  enabled = jax.config.jax_persistent_cache_enable_xla_caches or ""
  if cache is None or not (enabled == "all" or AUTOTUNE_CACHE in enabled):
    return {}
  return {AUTOTUNE_CACHE: str(pathlib.Path(cache) / AUTOTUNE_CACHE)}


def compile_into_store(prog: Program, abstract, xla_options: dict | None = None) -> str:
  """In the compile worker: compiles `prog` for these ShapeDtypeStructs and writes it to the
  executable store, nothing run. Returns the entry's path, which the decoding process checks
  against its own (the same code, settings and device give the same key). xla_options: more XLA
  options for this compile that leave the program's key as it is (shared_xla_caches)."""
  store = executable_store_dir()
  key = store_key(prog, abstract)
  if store is None or key is None:
    raise RuntimeError(f"{type(prog).__name__} cannot be stored (the executable store is off, "
                       "or the program's key is not reproducible), so a worker cannot compile it")
  path = _entry_path(store, key)
  if load_entry(path, key) is None:
    compiled = jit_program(prog).lower(*abstract).compile(
        compiler_options={**compiler_options(prog), **(xla_options or {})} or None)
    if not save_entry(path, key, compiled):
      raise RuntimeError(f"could not write {type(prog).__name__} to the store at {path}")
  return str(path)


def _send(stream, obj):
  data = pickle.dumps(obj)
  stream.write(len(data).to_bytes(8, "little") + data)
  stream.flush()


def _receive(stream):
  """The next message, or None at the end of the stream."""
  size = stream.read(8)
  if len(size) < 8:
    return None
  return pickle.loads(stream.read(int.from_bytes(size, "little")))


def serve_worker():
  """The compile worker's main loop (CompileWorker starts it in a new interpreter): the JAX
  settings of the decoding process first (they are part of the store key) with the XLA options
  of its caches (shared_xla_caches), then jobs (id, and the statics and ShapeDtypeStructs
  pickled), each answered with (id, ok, the entry's path or the error's text), until its input
  ends. JAX's own persistent cache is off here, so that every program is compiled and stored
  (one that JAX's cache returned is not: see _jax_cache_hits). Messages go over the original
  stdout; anything printed goes to stderr."""
  answers = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)
  os.nice(10)  # the decoding process's host loop first, where both want a core
  jobs = sys.stdin.buffer
  settings, xla_options = _receive(jobs)
  for name, value in settings.items():
    jax.config.update(name, value)
  jax.config.update("jax_enable_compilation_cache", False)
  jax.devices()  # the backend up (on a GPU, its context) before the first job
  _send(answers, (None, True, "ready"))
  while (job := _receive(jobs)) is not None:
    job_id, payload = job
    try:  # a statics class this interpreter cannot import fails its job, not the worker
      answer = (job_id, True, compile_into_store(*pickle.loads(payload), xla_options))
    except Exception as error:  # noqa: BLE001 the decoding process says why and compiles it
      answer = (job_id, False, f"{type(error).__name__}: {error}")
    try:
      _send(answers, answer)
    except BrokenPipeError:  # the decoding process ended
      return


class CompileWorker:
  """A separate Python process that compiles programs into the executable store, from their
  statics and argument shapes alone, for a decoding process that then loads them: a switch to a
  new skip set costs a load and a priming call, not a compile, and the compile's host work
  (tracing, lowering, XLA) runs outside this process and its GIL. Started on the first submit
  (a new interpreter with this process's sys.path and settings, no GPU memory taken ahead) and
  kept for the process's life. Its compiles share the host's cores and, where XLA autotunes,
  the device (it reads the autotuning results of the decoding process first: shared_xla_caches).
  A statics class defined in a script run as __main__ cannot be sent to it (its
  job fails; CompileCache then compiles the program in a thread)."""

  def __init__(self):
    self._proc: subprocess.Popen | None = None
    self._lock = threading.Lock()
    self._jobs: dict[int, concurrent.futures.Future] = {}
    self._next = 0
    self._ready = concurrent.futures.Future()  # set when the running worker said it is ready

  def start(self, wait: bool = False):
    """Starts the worker now, if it is not running (its interpreter, JAX and the backend take
    seconds to start: KnapSpec's warm-up starts it, so that no decode waits for that); wait:
    returns once it is ready for jobs."""
    with self._lock:
      self._running()
      ready = self._ready
    if wait:
      ready.result()

  def submit(self, prog: Program, abstract) -> concurrent.futures.Future:
    """A future of the stored entry's path (an exception if the worker could not store it)."""
    future = concurrent.futures.Future()
    with self._lock:
      self._running()
      job_id, self._next = self._next, self._next + 1
      self._jobs[job_id] = future
      try:
        _send(self._proc.stdin, (job_id, pickle.dumps((prog, abstract))))
      except (OSError, pickle.PicklingError, AttributeError, TypeError) as error:
        del self._jobs[job_id]
        future.set_exception(RuntimeError(f"could not send {type(prog).__name__} to the compile "
                                          f"worker: {error}"))
    return future

  def _running(self):
    """Starts the worker unless it is running (the caller holds the lock)."""
    if self._proc is None or self._proc.poll() is not None:
      self._start()

  def _start(self):
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    self._ready = concurrent.futures.Future()
    self._proc = subprocess.Popen(
        [sys.executable, "-c", "from knapspec_jax.compile_cache import serve_worker; "
         "serve_worker()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    _send(self._proc.stdin, ({name: getattr(jax.config, name) for name in _WORKER_SETTINGS},
                             shared_xla_caches()))
    threading.Thread(target=self._read, args=(self._proc, self._ready), daemon=True,
                     name="knapspec-compile-worker").start()

  def _read(self, proc: subprocess.Popen, ready: concurrent.futures.Future):
    while (answer := _receive(proc.stdout)) is not None:
      job_id, ok, value = answer
      if job_id is None:  # the worker's start-up is done
        ready.set_result(True)
        continue
      with self._lock:
        future = self._jobs.pop(job_id, None)
      if future is not None and ok:
        future.set_result(value)
      elif future is not None:
        future.set_exception(RuntimeError(value))
    with self._lock:  # the worker ended: its unanswered jobs fail
      jobs, self._jobs = self._jobs, {}
    error = RuntimeError(f"the compile worker exited (code {proc.wait()})")
    for future in [*jobs.values(), ready]:
      if not future.done():
        future.set_exception(error)


class CompileCache:
  """Maps (program statics, argument shapes and shardings) to a compiled executable."""

  def __init__(self):
    self._compiled: dict[Any, Any] = {}
    self._pending: dict[Any, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._worker: CompileWorker | None = None
    self._worker_jobs: dict[Any, concurrent.futures.Future] = {}  # key -> its entry's path
    self._worker_failed: set = set()  # keys a worker could not compile: compiled in a thread
    self.stats = CompileStats()

  def get_async(self, prog: Program, args, mode: str = "thread"):
    """The compiled program if it is ready, else None after making sure it is being compiled
    in the background (decoding goes on meanwhile). Takes what `get` takes.

    mode "thread": compiled in a background thread of this process (XLA compiles outside the
    GIL; tracing does not). "process": compiled by the compile worker into the executable store
    (CompileWorker), then loaded from there in the background thread (background_load_s), so
    that a switch to it costs the decoding thread nothing but what the load takes from it
    beside (measured on the H200: experiments/gpu/switch_cost.py --modes=worker). A program the
    store cannot hold (split over a mesh, the store off) compiles in a thread."""
    prog = _registered(prog)
    key = (prog, shape_key(args))
    with self._lock:  # a compiled program first: the decode loop asks on every segment
      if key in self._compiled:
        self.stats.hits += 1
        return self._compiled[key]
    abstract, mesh = _abstract(args)
    if background_mode(mode) == "process" and key not in self._worker_failed:
      store = executable_store_dir() if mesh is None else None
      entry = store_key(prog, args) if store is not None else None
      if entry is not None:
        return self._get_from_worker(prog, args, abstract, key, _entry_path(store, entry))
    with self._lock:
      if key in self._compiled:  # compiled since the look above (a background thread)
        self.stats.hits += 1
        return self._compiled[key]
      # One compile in flight per kind of program: a policy that changes its mind faster than
      # programs compile must not queue up programs it will never run.
      busy = any(type(k[0]) is type(prog) for k in self._pending)
      if key not in self._pending and not busy:
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(1, "knapspec-compile")
        # The donated arguments as shapes (the caller's next call consumes their buffers), the
        # rest as given: a load or compile primes with the caller's weights, not zeros.
        given = tuple(abstract[i] if i in prog.donate_argnums else args[i]
                      for i in range(len(args)))
        self._pending[key] = self._executor.submit(self.get, prog, given)
        self._pending[key].add_done_callback(lambda _: self._pending.pop(key, None))
    return None

  def start_worker(self, wait: bool = False):
    """Starts the compile worker ahead of its first job (get_async's "process" mode); wait:
    until it is ready for jobs (CompileWorker.start)."""
    with self._lock:
      worker = self._worker_held()
    worker.start(wait)

  def _worker_held(self) -> CompileWorker:
    """The compile worker, created on first use (the caller holds the lock)."""
    if self._worker is None:
      self._worker = CompileWorker()
    return self._worker

  def _get_from_worker(self, prog, args, abstract, key, path: pathlib.Path):
    with self._lock:
      job = self._worker_jobs.get(key)
      if job is None and path.is_file():  # stored (by the worker, or by an earlier process)
        pass
      elif job is not None and job.done():
        del self._worker_jobs[key]
        error = job.exception()
        if error is not None or job.result() != str(path):  # say why once; a thread compiles it
          self._worker_failed.add(key)
          why = error or f"it stored {job.result()}, this process's key names {path}"
          print(f"knapspec_jax: the compile worker did not store {type(prog).__name__} for this "
                f"process ({why}); compiling it in a background thread", file=sys.stderr)
      else:
        busy = any(type(k[0]) is type(prog) and not f.done()
                   for k, f in self._worker_jobs.items())
        if job is None and not busy:
          self._worker_jobs[key] = self._worker_held().submit(prog, abstract)
        return None
    # Stored: loaded (and primed) in the background thread as well, which the next poll finds
    # done; a compile that the worker could not do is the thread's too.
    return self.get_async(prog, args, "thread")

  def get(self, prog: Program, args):
    """The program (a registered statics object) compiled for the shapes and shardings of
    `args` (arrays or ShapeDtypeStructs); the compiled callable takes `args` positionally."""
    prog = _registered(prog)
    key = (prog, shape_key(args))
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
    abstract, mesh = _abstract(args)
    compiled, loaded = _build(prog, args, abstract, mesh)
    primed_at = time.perf_counter()
    try:
      primed = _prime(prog, compiled, args, abstract)
    except Exception:  # noqa: BLE001 a stored program that loaded but cannot run: compile it
      if not loaded:
        raise
      compiled, loaded = _build(prog, args, abstract, mesh, load=False)
      primed_at = time.perf_counter()
      primed = _prime(prog, compiled, args, abstract)
    end = time.perf_counter()
    with self._lock:
      self.stats.primed += primed
      self.stats.prime_s += (end - primed_at) if primed else 0.0
      self._compiled.setdefault(key, compiled)
      if loaded and in_background:
        self.stats.background_loaded += 1
        self.stats.background_load_s += end - start
      elif loaded:
        self.stats.loaded += 1
        self.stats.load_s += end - start
      elif in_background:
        self.stats.background_compiles += 1
        self.stats.background_compile_s += end - start
      else:
        self.stats.compiles += 1
        self.stats.compile_s += end - start
      return self._compiled[key]

  def wait_background(self) -> float:
    """Waits until no program compiles in the background; returns the seconds waited. A
    benchmark calls it before each timed run, so that no run shares the host with a compile
    that another run started."""
    start = time.perf_counter()
    while True:
      with self._lock:
        pending = [f for f in (*self._pending.values(), *self._worker_jobs.values())
                   if not f.done()]
      if not pending:
        return time.perf_counter() - start
      concurrent.futures.wait(pending)

  def contains(self, prog: Program, args: tuple | None = None, *, key: tuple | None = None) -> bool:
    """Whether `prog` is compiled for these arguments' shapes already (no compile, no wait);
    key: their shape_key, computed once by a caller that asks about many programs."""
    return (prog, shape_key(args) if key is None else key) in self._compiled

  def discard(self, what) -> int:
    """Drops the compiled programs of `what`: a statics object (every argument shape it was
    compiled for) or a statics class (all of its programs). Their executables go with their
    last reference; the next `get` loads or compiles them again. Returns how many."""
    match = ((lambda prog: type(prog) is what) if isinstance(what, type)
             else (lambda prog: prog == what))
    with self._lock:
      keys = [k for k in self._compiled if match(k[0])]
      for k in keys:
        del self._compiled[k]
      return len(keys)

  def programs(self) -> list:
    """The statics of every compiled program, once per compiled shape."""
    with self._lock:
      return [prog for prog, _ in self._compiled]

  def executables(self) -> list[tuple[Any, Any]]:
    """(statics, compiled executable) of every compiled program, once per compiled shape."""
    with self._lock:
      return [(prog, exe) for (prog, _), exe in self._compiled.items()]

  def __len__(self) -> int:
    return len(self._compiled)
