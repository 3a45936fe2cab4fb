"""Where the same-process slowdown of plain decoding comes from (issue 14, item 7).

  python experiments/gpu/same_process_slowdown.py [--model=PATH] [--others=knapspec,clasp]
  # H200, Qwen (after ship_qwen.sh; about 4 minutes):
  source experiments/gpu/qwen_env.sh && python3 experiments/gpu/same_process_slowdown.py \
      --model=$QWEN_GGUF --new_tokens=1024
  # without the GGUF (random weights of its shape, the committed profile; nothing to ship but
  # ship_qwen.sh setup's wheels; source experiments/gpu/env.sh, not qwen_env.sh, which joins):
  ... same_process_slowdown.py --random_shape=qwen2.5-1.5b --new_tokens=1024 --bisect \
      --profile=profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_pallas_windows__bfloat16.json
  # which program's first run slows the process, each in a fresh child (--trigger=all: none,
  # a Triton matmul, a cuBLAS matmul, the search, the search with its matmuls in Triton;
  # then AR's programs loaded anew and the program run again; run_slowdown_triggers.sh, about
  # 5 minutes):
  ... same_process_slowdown.py --random_shape=qwen2.5-1.5b --new_tokens=1024 --trigger=all
  # the finer bisect (--bisect: a method's steps one at a time, then which part of the model
  # carries the slowdown; about 4 minutes after the GGUF is joined):
  ... same_process_slowdown.py --model=$QWEN_GGUF --new_tokens=1024 --repeats=3 --idle_s=1 \
      --bisect --others=fixed,knapspec

On the H200, AR decodes a prompt ~9% slower in a process where other methods have run than in
one where only AR has (Qwen2.5-Coder-1.5B at 2K: 570-576 tok/s against 621-627; SmolLM2: 812-827
against 951-961). The benchmark's first AR run on its first prompt, before any other method, ran
at the fast speed, and every later AR run at the slow one. This times AR (median of --repeats
generations, the same prompt, compiled before the first stage) in stages of one process:

  fresh          nothing else has run
  idle           after --idle_s of host sleep (the GPU idles as it does during a long compile)
  alloc          after a large device array (--alloc_gb) was made and freed: the allocator's
                 free list changes, and the next KV cache may sit elsewhere
  after_METHOD   after one generation of METHOD, for each of --others in turn (its compiles,
                 searches and decoding)
  graphs_evicted (--bisect) a new program compiled (not run): XLA then drops every CUDA graph
                 it holds (EvictCommandBuffers), and AR records its graphs anew
  new_params     (--bisect) the same model with its weights copied to new device buffers
  new_programs   (--bisect) then with a new CompileCache: AR's programs loaded anew (from the
                 executable store) in place of the ones that ran before
  gc_collect     after gc.collect()
  gc_freeze      after gc.freeze() and with the collector off (host garbage, if it matters)
  new_model      a second load_model in this process (new params, new compiled programs), the
                 first model and its programs dropped
and then AR in a fresh child process (`--child`): the control for time and the GPU's state.
Each stage prints tokens/s, the GPU's clocks, power and temperature (nvidia-smi), the process's
resident memory and threads, the collector's object count and the device memory in use.
-> $OUT/same_process_slowdown.json

Keep the model file's own name (a shipped SmolLM2 as SmolLM2-135M-Instruct.Q4_1.gguf): the
latency profile is found by it, and under another name KnapSpec measures a new one (80 s on the
H200, which ended the first attempt; results/h200/same_process_slowdown/smollm2_partial.log).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gc
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # experiments/: common
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import (api, compile_cache, datasets, decoding, knapsack, latency,  # noqa: E402
                          speculative)
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.engine import DTYPES, Model, abstract_state  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402
import common  # noqa: E402
from shapes import SHAPES, spread  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "GGUF or checkpoint (default: $KNAPSPEC_MODEL, "
                             "else the bundled SmolLM2).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Params and KV dtype.")
_RANDOM = flags.DEFINE_string(
    "random_shape", None, "Instead of --model, random weights of this shape (shapes.SHAPES, e.g. "
    "qwen2.5-1.5b) with the device's default kernels and random prompt ids: nothing to ship.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "The latency profile the methods decide with (with --random_shape: a "
    "profile of the same shape, e.g. the committed H200 Qwen one; else the model's own).")
_N = flags.DEFINE_integer("n_tokens", 2000, "Prompt length (a long-document prompt).")
_NEW = flags.DEFINE_integer("new_tokens", 512, "New tokens per generation.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "AR generations per stage (median).")
_OTHERS = flags.DEFINE_list("others", ["knapspec", "clasp"], "Methods run before 'others'.")
_IDLE_S = flags.DEFINE_float("idle_s", 20.0, "Host sleep of the 'idle' stage.")
_ALLOC_GB = flags.DEFINE_float("alloc_gb", 8.0, "Size of the 'alloc' stage's array.")
_CHILD = flags.DEFINE_bool("child", False, "Only the 'fresh' stage (the control process).")
_BISECT = flags.DEFINE_bool(
    "bisect", False, "Before the methods, the steps of a speculative method one at a time "
    "(bisect_stages): which one slows AR.")
_SEARCH_BISECT = flags.DEFINE_bool(
    "search_bisect", False, "Only the stages that split the knapsack search's effect "
    "(search_stages): its prefill, its run, its executable dropped and loaded again, and one "
    "compiled without CUDA graphs. No other methods run.")
_TRIGGER = flags.DEFINE_string(
    "trigger", None, "Only AR fresh, then one program of TRIGGERS run, then AR again, AR with "
    "its programs loaded anew, and AR after the program's second run (trigger_stages); 'all' "
    "or a comma list: each trigger in a child process of its own, each fresh. Which "
    "program's first run slows AR (the search is known to; its three cuBLASLt matmuls are the "
    "only cuBLAS calls of the search bisect's programs, BENCHMARKS.md 10.23).")
_METHOD_OPTIONS = flags.DEFINE_list(
    "method_options", [], "Options of the --others methods, METHOD.FIELD=VALUE (JSON values), "
    "e.g. knapspec.search_new_buckets=true.")
_TRACE_TOKENS = flags.DEFINE_integer(
    "trace_tokens", 0, "After each stage's timed runs, one more AR generation of this many "
    "tokens under jax.profiler.trace, summarized (device_trace_summary): the device's busy time "
    "against the wall span, and the kernels that took it. Whether a slow stage's kernels run "
    "slower, or the device waits between them. 0: no trace.")
_LOG_PATTERNS = flags.DEFINE_list(
    "xla_log_patterns", [], "Count the lines of the process's stderr holding each of these "
    "strings during each stage's AR runs (stderr then goes to a file; run with XLA's logging on, "
    "e.g. TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=command_buffer_thunk=3): how often XLA "
    "re-records, evicts or re-traces its CUDA graphs per AR run.")
_STACK = flags.DEFINE_integer(
    "stack_bytes", 0, "Before anything runs, set the CUDA context's per-thread stack limit to "
    "this many bytes (cuCtxSetLimit): whether a local-memory pool sized up front keeps the "
    "search from slowing AR. 0: leave it.")
_HLO_DIR = flags.DEFINE_string(
    "hlo_dir", None, "With --trigger: write the trigger's program and AR's decode programs as XLA "
    "optimized them (their kernels' fusion kinds and Triton configs) to this folder.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON (default $OUT/same_process_slowdown.json "
                              "when OUT is set).")


def gpu_state() -> str:
  """Clocks, power and temperature from nvidia-smi ('' where there is none)."""
  try:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,pstate",
         "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


# cuCtxGetLimit's limits (cuda.h CUlimit): the per-thread stack, whose pool the driver grows,
# for the whole context, when a kernel needing more local memory (spills, local arrays) launches.
CU_LIMITS = {"stack": 0x00, "malloc_heap": 0x02}


def cuda_context(call):
  """call(libcuda) with the primary context of device 0 (the one XLA runs in) current on
  this thread; None where there is no CUDA driver or a call fails (the failing call printed).
  The driver's versioned entry points (cuCtxPushCurrent_v2, ...) are the ones cuda.h binds."""
  import ctypes  # pylint: disable=import-outside-toplevel
  try:
    cuda = ctypes.CDLL("libcuda.so.1")
  except OSError:
    return None
  entry = lambda name: getattr(cuda, f"{name}_v2", None) or getattr(cuda, name)
  ctx, dev = ctypes.c_void_p(), ctypes.c_int()
  for name, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(dev), 0)),
                     ("cuDevicePrimaryCtxRetain", (ctypes.byref(ctx), dev)),
                     ("cuCtxPushCurrent", (ctx,))):
    rc = entry(name)(*args)
    if rc:
      print(f"  libcuda: {name} -> CUresult {rc}", flush=True)
      return None
  try:
    return call(cuda)
  finally:
    entry("cuCtxPopCurrent")(ctypes.byref(ctypes.c_void_p()))
    entry("cuDevicePrimaryCtxRelease")(dev)


def cuda_limits() -> dict:
  """The CUDA context's limits in bytes (CU_LIMITS; a failed read as its CUresult), {} without
  a CUDA driver."""
  import ctypes  # pylint: disable=import-outside-toplevel

  def read(cuda):
    out = {}
    for name, limit in CU_LIMITS.items():
      value = ctypes.c_size_t()
      rc = cuda.cuCtxGetLimit(ctypes.byref(value), limit)
      out[name] = value.value if rc == 0 else f"CUresult {rc}"
    return out
  return cuda_context(read) or {}


def set_stack_limit(per_thread: int) -> dict:
  """cuCtxSetLimit(stack, per_thread bytes) before any program runs: the local-memory pool sized
  up front, so that no later kernel grows it. Returns the limits after."""
  import ctypes  # pylint: disable=import-outside-toplevel
  rc = cuda_context(lambda cuda: cuda.cuCtxSetLimit(CU_LIMITS["stack"],
                                                    ctypes.c_size_t(per_thread)))
  # 0 is CUDA_SUCCESS; None: no driver, or the context could not be made current (printed)
  limits = cuda_limits()
  print(f"cuCtxSetLimit(stack, {per_thread}) -> {rc}; limits now {limits}", flush=True)
  return limits


def threads() -> int:
  """The process's threads, Python's and the runtime's."""
  try:
    return len(os.listdir("/proc/self/task"))
  except OSError:
    return -1


def live_executables(top: int = 4) -> dict:
  """The executables the XLA client holds (the project's programs, JAX's own and any a dropped
  program left behind: whether CompileCache.discard freed the search, with the profiler on or
  off, BENCHMARKS.md 10.22): their count and the `top` largest by generated code, by module."""
  executables = jax.devices()[0].client.live_executables()
  sizes = sorted(((e.size_of_generated_code_in_bytes(), e.hlo_modules()[0].name)
                  for e in executables), reverse=True)[:top]
  return dict(count=len(executables), largest={name[:60]: size for size, name in sizes})


def device_bytes() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats.get("bytes_in_use", 0))


class StderrLog:
  """The process's stderr (fd 2: XLA's C++ logging too) sent to a file, read a stage at a time
  (--xla_log_patterns); the stage lines still reach the terminal through stdout."""

  def __init__(self, patterns):
    self.patterns = list(patterns)
    fd, name = tempfile.mkstemp(prefix="xla_log_")
    os.dup2(fd, 2)
    os.close(fd)
    self.file = open(name, "rb")

  def counts(self) -> dict[str, int]:
    """Lines holding each pattern since the last call, and the microseconds XLA's
    CommandBufferThunk says its graph updates took ("Updated command buffer in N μs", VLOG 3)."""
    lines = self.file.read().decode(errors="replace").splitlines()
    out = {p: sum(p in line for line in lines) for p in self.patterns}
    out["graph_update_us"] = sum(int(m.group(1)) for line in lines
                                 if (m := re.search(r"Updated command buffer in (\d+)", line)))
    return out


_LOG: list = []  # the StderrLog, when --xla_log_patterns is given


def merged(spans: list) -> list:
  """Sorted, disjoint (start, end) intervals covering the given ones."""
  out = []
  for s, e in sorted(spans):
    if out and s <= out[-1][1]:
      out[-1][1] = max(out[-1][1], e)
    else:
      out.append([s, e])
  return out


def overlap_with(intervals: list, s: float, e: float) -> float:
  """Time of [s, e) covered by `merged` intervals."""
  i = max(bisect.bisect_right(intervals, [s, float("inf")]) - 1, 0)
  covered = 0.0
  while i < len(intervals) and intervals[i][0] < e:
    covered += max(0.0, min(e, intervals[i][1]) - max(s, intervals[i][0]))
    i += 1
  return covered


def successive(events: list) -> dict:
  """How each event of one line (stream) starts against the one before it in start order:
  `overlaps`, the pairs where it starts before that one ends, with their median and 90th
  percentile overlap in us and how many cover at least half the shorter event (`side_by_side`:
  whole kernels running together, as a CUDA graph's unordered nodes can, rather than one
  starting while the one before it drains, as programmatic dependent launch allows); `gaps`,
  the other pairs, with their median and 90th percentile idle time in us."""
  mine = sorted((s, e) for s, e, *_ in events)
  overlaps, gaps, side = [], [], 0
  for (s0, e0), (s1, e1) in zip(mine, mine[1:]):
    if s1 < e0:
      overlaps.append(min(e0, e1) - s1)
      side += overlaps[-1] >= 0.5 * min(e0 - s0, e1 - s1)
    else:
      gaps.append(s1 - e0)
  pct = lambda xs, q: round(float(np.percentile(xs, q)) / 1e3, 3) if xs else 0.0
  return dict(overlaps=len(overlaps), overlap_us_median=pct(overlaps, 50),
              overlap_us_p90=pct(overlaps, 90), side_by_side=side, gaps=len(gaps),
              gap_us_median=pct(gaps, 50), gap_us_p90=pct(gaps, 90))


def device_trace_summary(path: str, top: int = 6) -> dict:
  """From a jax.profiler trace (its .xplane.pb): on each device plane, the events of every line
  (kernels and copies on each stream) as counts, summed durations, the busy time (their union)
  and the span from the first start to the last end, and the `top` event names by summed time.
  Which events overlap others: `lines`, each line's (stream's) events, summed and busy time and
  top names, and `overlapping`, the `top` event names by the time they overlap events of other
  lines or of their own (summed minus busy of 10.22's table, BENCHMARKS.md: 110 us of each
  token's events overlapped in a fresh process, 10 us once the search had run), and per line
  how each event starts against the one before it (`successive`).
  {} where the trace has no device plane (a CPU run)."""
  data = jax.profiler.ProfileData.from_file(path)
  out = {}
  for plane in data.planes:
    if not plane.name.startswith("/device:"):
      continue
    spans, per_name, lines = [], {}, {}
    for line in plane.lines:
      events = [(event.start_ns, event.start_ns + event.duration_ns, event.name)
                for event in line.events if event.duration_ns > 0]
      if events:
        lines[line.name] = events
      for s, e, name in events:
        spans.append((s, e))
        per_name[name] = per_name.get(name, 0.0) + e - s
    if not spans:
      continue
    busy = sum(e - s for s, e in merged(spans))
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    names = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    line_rows, overlapping = {}, {}
    for name, events in lines.items():
      others = merged([(s, e) for other, evs in lines.items() if other != name
                       for s, e, _ in evs])
      mine = sorted(events)
      reach = float("-inf")  # the latest end among this line's earlier events
      for s, e, event in mine:
        covered = overlap_with(others, s, e) + max(0.0, min(e, reach) - s)
        if covered > 0:
          overlapping[event] = overlapping.get(event, 0.0) + covered
        reach = max(reach, e)
      by_name = {}
      for s, e, event in events:
        by_name[event] = by_name.get(event, 0.0) + e - s
      line_rows[name[:60]] = dict(
          events=len(events), summed_ms=round(sum(by_name.values()) / 1e6, 3),
          busy_ms=round(sum(e - s for s, e in merged([(s, e) for s, e, _ in events])) / 1e6, 3),
          top={n[:60]: round(t / 1e6, 3)
               for n, t in sorted(by_name.items(), key=lambda kv: -kv[1])[:3]},
          successive=successive(events))
    out[plane.name] = dict(events=len(spans), summed_ms=sum(per_name.values()) / 1e6,
                           busy_ms=busy / 1e6, span_ms=span / 1e6,
                           busy_fraction=busy / span if span else 0.0,
                           top={n[:80]: round(t / 1e6, 3) for n, t in names}, lines=line_rows,
                           overlapping={n[:80]: round(t / 1e6, 3) for n, t in sorted(
                               overlapping.items(), key=lambda kv: -kv[1])[:top]})
  return out


def traced_ar(model, ids, tokens: int) -> dict:
  """One AR generation of `tokens` under the profiler, summarized per token."""
  with tempfile.TemporaryDirectory(prefix="ar_trace_") as folder:
    with jax.profiler.trace(folder):
      r = ks.generate(model, ids, tokens, "ar", ignore_eos=True)
    files = sorted(pathlib.Path(folder).rglob("*.xplane.pb"))
    summary = device_trace_summary(str(files[-1])) if files else {}
  for plane in summary.values():
    plane["busy_us_per_token"] = round(1e3 * plane["busy_ms"] / tokens, 2)
    plane["span_us_per_token"] = round(1e3 * plane["span_ms"] / tokens, 2)
    plane["events_per_token"] = round(plane["events"] / tokens, 1)
  return dict(tokens_per_s=r.tokens_per_s, devices=summary)


def ar_stage(name: str, model, ids) -> dict:
  """AR's tokens/s over --repeats generations (compiled already), with the process's state."""
  if _LOG:
    _LOG[0].counts()  # what the work before this stage logged is not this stage's
  speeds = []
  for _ in range(_REPEATS.value):
    r = ks.generate(model, ids, _NEW.value, "ar", ignore_eos=True)
    speeds.append(r.tokens_per_s)
  row = dict(stage=name, tokens_per_s=speeds, median=statistics.median(speeds), gpu=gpu_state(),
             rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, threads=threads(),
             gc_objects=len(gc.get_objects()), device_mb=device_bytes() / 2**20,
             programs=len(model.compiled), live_executables=live_executables(),
             cuda_limits=cuda_limits())
  if _LOG:
    row["xla_log_lines"] = _LOG[0].counts()
  if _TRACE_TOKENS.value:
    row["trace"] = traced_ar(model, ids, _TRACE_TOKENS.value)
    row["live_executables_after_trace"] = live_executables()
    for plane, t in row["trace"]["devices"].items():
      busiest = max(t["lines"].values(), key=lambda line: line["events"])
      print(f"  {name} trace {plane}: busy {t['busy_us_per_token']} us/token of "
            f"{t['span_us_per_token']} ({t['busy_fraction']:.1%}), {t['events_per_token']} "
            f"events/token; successive events on the busiest stream {busiest['successive']}; "
            f"top {t['top']}; overlapping (ms over the trace) {t['overlapping']}; streams "
            f"{ {k: v['events'] for k, v in t['lines'].items()} }", flush=True)
  print(f"{name:11s} AR {row['median']:7.1f} tok/s (runs {', '.join(f'{s:.1f}' for s in speeds)})"
        f"  gpu [{row['gpu']}]  max rss {row['rss_mb']:.0f} MB  threads {row['threads']}"
        f"  gc objects {row['gc_objects']}"
        f"  device {row['device_mb']:.0f} MB  programs {row['programs']}"
        f"  live executables {row['live_executables']['count']}  cuda limits {row['cuda_limits']}"
        + (f" ({row['live_executables_after_trace']['count']} after the trace)"
           if "live_executables_after_trace" in row else "")
        + (f"  XLA log lines {row['xla_log_lines']}" if _LOG else ""), flush=True)
  return row


def prompt_state(model, ids):
  """The decode state after the prompt's prefill, as a method's caller makes it."""
  cache = KVCache.create(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  logits, cache = decoding.prefill(model.params, model.cfg, ids, cache, model.compiled)
  return decoding.init_state(cache, logits, _NEW.value, ())


def bisect_stages(model, ids) -> list[dict]:
  """AR after each step a speculative method takes, in turn, each step's own program (a draft
  skipping 8 attention and 8 MLP sublayers, as KnapSpec's kept draft on Qwen does):

  compile_only   a draft program compiled (jit, lower, compile), not run
  run_main       that program run once on this thread
  store          the executable store's copy of it written (serialized), as CompileCache does
  thread_run     a second draft program compiled and run on a background thread
                 (CompileCache.get_async, the path KnapSpec's kept drafts take)
  spec_segment   a speculation segment (draft + verify rounds) compiled and run once here
  search         KnapSpec's knapsack search (knapsack.search, latency weights 1) compiled and
                 run once on the prompt's cache, scoring drafts on its last 16 tokens
  plain_window   a generation decoded as a method's plain windows: AR's own programs, paused
                 after 16 tokens (decoding.run_ar's max_tokens, as controller.py does), resumed
  ar_after_spec  AR's own program run on the state a speculation segment left: prompt, 8 rounds
                 of the segment above, then AR to the end (a method's plain window after drafts)
  (Session 15 on the H200: none of the first five slowed AR, a KnapSpec generation did, and a
  new model in the same process was fast again; results/h200/same_process_slowdown/.)
  """
  cfg = model.cfg
  n = len(ids) + 64
  bucket = decoding.attn_bucket(n + 16, KVCache.capacity_for(cfg))
  mask = lambda k: SkipMask.from_layers(cfg.n_layers, attn=spread(cfg.n_layers, k),
                                       mlp=spread(cfg.n_layers, k))
  dtype = jnp.bfloat16 if model.dtype == "bfloat16" else jnp.float32
  state = lambda max_new: decoding.init_state(
      latency.random_cache(cfg, dtype, n, jax.random.PRNGKey(1)),
      jnp.zeros((cfg.vocab_size,), jnp.float32), max_new, ())
  rows = []
  draft = decoding.ARSegmentStatics(cfg, bucket, skip=mask(8))
  exe = compile_cache.jit_program(draft).lower(model.params, state(8)).compile()
  rows.append(ar_stage("compile_only", model, ids))
  jax.block_until_ready(exe(model.params, state(8)))
  rows.append(ar_stage("run_main", model, ids))
  store = compile_cache.executable_store_dir()
  if store is not None:
    args = (model.params, state(8))
    key = compile_cache.store_key(draft, args)
    compile_cache.save_entry(store / "bisect_probe", key, exe)
    rows.append(ar_stage("store", model, ids))
  other = decoding.ARSegmentStatics(cfg, bucket, skip=mask(6))
  args = (model.params, state(8))
  while model.compiled.get_async(other, args) is None:
    time.sleep(0.05)
  rows.append(ar_stage("thread_run", model, ids))
  seg = speculative.SpecSegmentStatics(cfg, mask(8), 2, bucket)
  seg_args = (model.params, state(40), speculative.SpecCounters.zeros(),
              jnp.asarray(8, jnp.int32), jnp.asarray(0.0, jnp.float32))
  jax.block_until_ready(model.compiled.get(seg, seg_args)(*seg_args))
  rows.append(ar_stage("spec_segment", model, ids))

  r = 16
  cache = prompt_state(model, ids).cache
  jax.block_until_ready(knapsack.search(model.params, cfg, cache, ids[-r:], len(ids) - r, 1, 1,
                                        model.compiled))
  rows.append(ar_stage("search", model, ids))
  s = decoding.run_ar(model.params, cfg, prompt_state(model, ids), model.compiled,
                      max_tokens=16)
  jax.block_until_ready(decoding.run_ar(model.params, cfg, s, model.compiled))
  rows.append(ar_stage("plain_window", model, ids))
  at = decoding.attn_bucket(len(ids) + 32, KVCache.capacity_for(cfg))
  seg_at = speculative.SpecSegmentStatics(cfg, mask(8), 2, at)
  args = (model.params, prompt_state(model, ids), speculative.SpecCounters.zeros(),
          jnp.asarray(8, jnp.int32), jnp.asarray(0.0, jnp.float32))
  s, _ = model.compiled.get(seg_at, args)(*args)
  jax.block_until_ready(decoding.run_ar(model.params, cfg, s, model.compiled))
  rows.append(ar_stage("ar_after_spec", model, ids))
  return rows


_JAX_CACHE_HITS: list = []  # one entry per program JAX's persistent cache served
jax.monitoring.register_event_listener(
    lambda event, **_: _JAX_CACHE_HITS.append(1)
    if event == "/jax/compilation_cache/cache_hits" else None)


def program_facts(exe) -> str:
  """A compiled program's memory (XLA's memory analysis) and its kernels' custom calls."""
  facts = []
  try:
    m = exe.memory_analysis()
    facts.append(f"temp {m.temp_size_in_bytes / 2**20:.0f} MiB, generated code "
                 f"{m.generated_code_size_in_bytes / 2**20:.1f} MiB, arguments "
                 f"{m.argument_size_in_bytes / 2**20:.0f} MiB, output "
                 f"{m.output_size_in_bytes / 2**20:.0f} MiB")
  except Exception as e:  # noqa: BLE001 a backend without it
    facts.append(f"no memory analysis ({type(e).__name__})")
  try:
    text = exe.as_text()
    targets = re.findall(r'custom_call_target="([^"]+)"', text)
    facts.append("custom calls " + str({t: targets.count(t) for t in sorted(set(targets))}))
    starts = re.findall(r" ([a-z-]+)-start\(", text)
    facts.append("async ops " + str({t: starts.count(t) for t in sorted(set(starts))}))
  except Exception as e:  # noqa: BLE001
    facts.append(f"no HLO text ({type(e).__name__})")
  return "; ".join(facts)


def timed_runs(fn, args, label: str):
  """fn(*args) once, then five times timed: prints the median."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  print(f"  {label}: {1e3 * statistics.median(times):.2f} ms (median of 5)", flush=True)


def search_program(model, ids, cache) -> tuple:
  """(statics, args) of KnapSpec's search on the prompt's cache, scoring drafts on its last 16
  tokens (latency weights 1), as the engine compiles it."""
  r = 16
  args = (model.params, cache, jnp.asarray(ids[-r:], jnp.int32),
          jnp.asarray(len(ids) - r, jnp.int32), jnp.asarray(1, jnp.int32),
          jnp.asarray(1, jnp.int32))
  return knapsack.SearchStatics.of(model.cfg, decoding.attn_bucket(len(ids), cache.capacity)), args


def search_stages(model, ids) -> list[dict]:
  """AR after each part of KnapSpec's search (session 16: on the H200 the `search` stage of
  bisect_stages is where AR slows, 629 -> 574 tok/s, and a new CompileCache makes it fast
  again):

  prefill          the prompt's state made as the search's caller makes it (prefill, no search)
  search_compiled  the search compiled (or loaded from the executable store), not run
  search           then run
  search_dropped   its executable dropped from the compile cache (CompileCache.discard), gc
  search_reloaded  the search run again: loaded anew (executable store) or compiled
  search_dropped2  dropped again
  search_loaded    the search loaded from the executable store and not run (as a warm-up's
                   compile_search leaves every bucket's search), then dropped (session 16: a
                   KnapSpec generation that dropped the one search it ran still left AR at 570
                   tok/s, with another bucket's search loaded at warm-up and never run alive)
  search_no_graphs the search compiled with XLA's command buffers (CUDA graphs) off for this one
                   program (compiler_options) and run: whether its graphs carry the slowdown
  search_no_graphs_dropped  that executable dropped too
  The search's own time is printed for each way it was compiled."""
  rows = []
  cache = jax.block_until_ready(prompt_state(model, ids).cache)
  rows.append(ar_stage("prefill", model, ids))
  statics, args = search_program(model, ids, cache)
  loaded, hits = model.compiled.stats.loaded, len(_JAX_CACHE_HITS)
  exe = model.compiled.get(statics, args)
  # Where the executable store or JAX's persistent cache has it already (a machine that ran this
  # before), the first get deserializes it: then this stage is a loaded search's, like
  # search_loaded below, not a compiled one's.
  fresh = model.compiled.stats.loaded == loaded and len(_JAX_CACHE_HITS) == hits
  first = "search_compiled" if fresh else "search_loaded_first"
  rows.append(ar_stage(first, model, ids))
  print(f"  the search's program: {program_facts(exe)}", flush=True)
  timed_runs(exe, args, "search (default)")
  del exe
  rows.append(ar_stage("search", model, ids))
  print(f"  dropped {model.compiled.discard(knapsack.SearchStatics)} search program(s)")
  gc.collect()
  rows.append(ar_stage("search_dropped", model, ids))
  timed_runs(model.compiled.get(statics, args), args, "search (reloaded)")
  rows.append(ar_stage("search_reloaded", model, ids))
  model.compiled.discard(knapsack.SearchStatics)
  gc.collect()
  rows.append(ar_stage("search_dropped2", model, ids))
  if compile_cache.executable_store_dir() is not None:  # loaded (deserialized), never run
    model.compiled.get(statics, args)
    rows.append(ar_stage("search_loaded", model, ids))
    model.compiled.discard(knapsack.SearchStatics)
    gc.collect()
    rows.append(ar_stage("search_loaded_dropped", model, ids))
  try:
    exe = compile_cache.jit_program(statics).lower(*args).compile(
        compiler_options={"xla_gpu_enable_command_buffer": ""})
  except Exception as e:  # noqa: BLE001 an option this jaxlib refuses: say so, go on
    print(f"  no search without graphs: {type(e).__name__}: {str(e)[:300]}", flush=True)
    return rows
  timed_runs(exe, args, "search (no CUDA graphs)")
  rows.append(ar_stage("search_no_graphs", model, ids))
  del exe
  gc.collect()
  rows.append(ar_stage("search_no_graphs_dropped", model, ids))
  return rows


# trigger_stages' programs: "none" (AR twice: the drift), a matmul through XLA's Triton emitter
# and the same through cuBLAS(Lt), the knapsack search as the engine compiles it (with XLA's
# latency-hiding scheduler off since BENCHMARKS.md 10.25: knapsack.SCORING_OPTIONS), the search
# with that scheduler on as before ("search_lhs"), the search with every matmul asked of
# Triton, without CUDA graphs (command buffers off for that one program), and with its loops
# inside the graphs (CUDA conditional nodes, no host round trip per iteration); then programs
# with one feature of the search each: a loop whose trip count the device computes (the
# search's _map_live: XLA runs it from the host, one predicate copied back per iteration), a
# temporary buffer as large as the weights (the search stacks them: 2.7 GB of temp), and an
# argsort. Last, cuBLASLt alone, which the search calls three times and the other
# programs never: a matmul with cuBLASLt asked for, and the search's own logits matmul (its
# rows of every budget state against the 151,936-token head) compiled as XLA chooses. Then the
# search's relatives: the search with a DP table of three budgets (few branches), DEL's and the
# mask scorer's programs (the same prefix attention and layer scan, one or two branches), and
# the layer stacking alone; and DEL's program run with p0 = 0, so that its loop over prefix
# blocks runs no iteration (the same executable, other data).
TRIGGERS = ("none", "triton_dot", "cublas_dot", "search", "search_triton_gemms",
            "search_no_graphs", "search_graph_loops", "search_lhs", "device_loop", "large_temp",
            "argsort", "cublaslt_dot", "head_dot", "search_small", "exit_agreement",
            "mask_agreement", "stack_layers", "exit_agreement_p0", "scan_slices") + tuple(
                f"exit_agreement_{name}" for name in (
                    "lhs", "no_lhs", "one_compute_stream", "async_limit_1",
                    "no_dynamic_slice_fusion"))
# The search's relatives slice their stacked layer weights in a loop over layers, and XLA runs
# those dynamic slices as async ops (fusion-start / fusion-done), which AR's programs have none
# of. "scan_slices" is that pattern alone (a scan over stacked matrices); exit_agreement_<name>
# is DEL's program compiled with one of these options, each a candidate for keeping the slices
# on the main stream (the trigger's "async ops" say whether it did). Only the latency-hiding
# scheduler off kept AR at full speed (10.25), and the engine now compiles the search's family so.
LHS = {"xla_gpu_enable_latency_hiding_scheduler": True}
ASYNC_OPTIONS = {"lhs": LHS, "no_lhs": {"xla_gpu_enable_latency_hiding_scheduler": False},
                 "one_compute_stream": {"xla_gpu_executable_num_compute_streams": 1},
                 "async_limit_1": {"xla_gpu_experimental_parallel_async_compute_limit": 1},
                 "no_dynamic_slice_fusion": {"xla_gpu_enable_dynamic_slice_fusion": False}}
CUBLAS_GEMMS = {"xla_gpu_enable_triton_gemm": False}
CUBLASLT_GEMMS = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_enable_cublaslt": True}
TRITON_GEMMS = {"xla_gpu_triton_gemm_any": True, "xla_gpu_cublas_fallback": False,
                "xla_gpu_enable_cublaslt": False}
NO_GRAPHS = {"xla_gpu_enable_command_buffer": ""}
GRAPH_LOOPS = {"xla_gpu_enable_command_buffer":
               "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE"}


def device_loop(x, n):
  """y <- tanh(y @ x.T @ x), n times from y = x (n an int32 array: XLA cannot know the trip
  count)."""
  return jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ x.T @ x), x)


def scan_slices(x, up, down):
  """x through every layer's (up, down) pair, [L, D, F] and [L, F, D], by a scan: XLA slices
  layer l's matrices out of the stacks in the loop body, as the search does its weights."""
  layer = lambda y, w: (jnp.tanh(y @ w[0]) @ w[1], None)
  return jax.lax.scan(layer, x, (up, down))[0]


def large_temp(x, copies: int):
  """A temporary of `copies` x's, kept whole by an optimization barrier, then summed."""
  return jnp.sum(jax.lax.optimization_barrier(jnp.tile(x, (copies, 1))), dtype=jnp.float32)


def trigger_program(model, ids, trigger: str) -> tuple:
  """(jitted program, args, compiler options) of one of TRIGGERS but "none"."""
  dtype = DTYPES[model.dtype]
  d = model.cfg.d_model
  if trigger == "head_dot":
    rows = knapsack.default_chunk(model.cfg.n_layers) * 16
    head = lambda params, h: model_lib.lm_head(params, model.cfg, h)
    return jax.jit(head), (model.params, jnp.ones((rows, d), dtype)), {}
  if trigger.endswith("_dot"):
    args = (jnp.ones((512, d), dtype), jnp.ones((d, 2048), dtype))
    options = {"cublas_dot": CUBLAS_GEMMS, "cublaslt_dot": CUBLASLT_GEMMS}
    return jax.jit(jnp.matmul), args, options.get(trigger, {})
  if trigger.startswith("search") or "_agreement" in trigger:
    return scoring_trigger(model, ids, trigger)
  if trigger == "scan_slices":
    n, f = model.cfg.n_layers, model.cfg.d_ff
    return (jax.jit(scan_slices), (jnp.ones((16, d), dtype), jnp.ones((n, d, f), dtype) / d,
                                   jnp.ones((n, f, d), dtype) / f), {})
  if trigger == "stack_layers":
    return jax.jit(knapsack.stack_layers), (model.params,), {}
  if trigger == "device_loop":
    return jax.jit(device_loop), (jnp.ones((16, d), dtype), jnp.asarray(4, jnp.int32)), {}
  if trigger == "large_temp":
    weight_bytes = sum(a.nbytes for a in jax.tree.leaves(model.params))
    x = jnp.ones((1024, d), dtype)
    copies = max(1, weight_bytes // x.nbytes)
    return jax.jit(functools.partial(large_temp, copies=copies)), (x,), {}
  if trigger == "argsort":
    flags_ = jnp.asarray(np.arange(64) % 3 == 0)
    return jax.jit(lambda f: jnp.argsort(~f, stable=True)), (flags_,), {}
  raise ValueError(f"unknown trigger {trigger!r}: not one of {TRIGGERS}")


def scoring_trigger(model, ids, trigger: str) -> tuple:
  """trigger_program for the search's family: the program compiled with the options the engine
  gives it (compile_cache.compiler_options), the trigger's own options on top."""
  statics, args = search_program(model, ids, prompt_state(model, ids).cache)
  extra = {}
  if trigger == "search_small":
    program = dataclasses.replace(statics, k_max=2, chunk=3)
  elif trigger.startswith("search"):
    program = statics
    extra = {"search_triton_gemms": TRITON_GEMMS, "search_no_graphs": NO_GRAPHS,
             "search_graph_loops": GRAPH_LOOPS, "search_lhs": LHS}.get(trigger, {})
  else:  # DEL's or the mask scorer's program, on the search's first four arguments
    args = args[:3] + ((jnp.asarray(0, jnp.int32),) if trigger.endswith("_p0") else args[3:4])
    if trigger.startswith("exit_agreement"):
      program = knapsack.ExitAgreementStatics(model.cfg, statics.attn_len)
      extra = ASYNC_OPTIONS.get(trigger.removeprefix("exit_agreement_"), {})
    else:
      program = knapsack.MaskAgreementStatics(model.cfg, statics.attn_len)
      args += (jnp.zeros((2 * model.cfg.n_layers,), bool).at[4:20:2].set(True),)
  return (compile_cache.jit_program(program), args,
          {**compile_cache.compiler_options(program), **extra})


def trigger_stages(model, ids, trigger: str) -> list[dict]:
  """AR after one run of `trigger`'s program (TRIGGERS), its custom calls printed; then AR's
  programs loaded anew (a new CompileCache), and AR after the trigger's second run. The fresh
  stage before them is the caller's."""
  if trigger == "none":
    return [ar_stage("after_none", model, ids)]
  program, args, options = trigger_program(model, ids, trigger)
  try:
    exe = program.lower(*args).compile(compiler_options=options)
  except Exception as e:  # noqa: BLE001 an option this jaxlib refuses: say so
    print(f"  {trigger}: not compiled with {options}: {type(e).__name__}: {str(e)[:300]}",
          flush=True)
    return []
  print(f"  {trigger}'s program: {program_facts(exe)}", flush=True)
  if _HLO_DIR.value:
    write_hlo(model, exe, trigger)
  timed_runs(exe, args, trigger)
  rows = [ar_stage(f"after_{trigger}", model, ids)]
  # AR's programs as new executables (a new CompileCache loads them from the executable store):
  # a second load_model ran at full speed after a KnapSpec generation (BENCHMARKS.md 10.23).
  # Then the trigger once more: whether the new executables slow down again.
  model.compiled = compile_cache.CompileCache()
  r = ks.generate(model, ids, _NEW.value, "ar", ignore_eos=True)
  print(f"  AR's programs loaded anew: {r.compile_s:.3f} s", flush=True)
  rows.append(ar_stage("ar_reloaded", model, ids))
  timed_runs(exe, args, f"{trigger} again")
  rows.append(ar_stage(f"after_{trigger}_again", model, ids))
  return rows


def write_hlo(model, exe, trigger: str):
  """The trigger's optimized HLO and that of every program in AR's compile cache, as text files
  in --hlo_dir."""
  folder = pathlib.Path(_HLO_DIR.value)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{trigger}.hlo.txt").write_text(exe.as_text())
  for i, (statics, program) in enumerate(model.compiled.executables()):
    (folder / f"ar_{i}_{type(statics).__name__}.hlo.txt").write_text(program.as_text())
  print(f"  wrote {folder}", flush=True)


def chosen_triggers() -> tuple[str, ...]:
  """--trigger's names: 'all' is TRIGGERS; a comma list its names, checked."""
  names = TRIGGERS if _TRIGGER.value == "all" else tuple(_TRIGGER.value.split(","))
  unknown = [n for n in names if n not in TRIGGERS]
  if unknown:
    raise app.UsageError(f"--trigger={_TRIGGER.value}: {unknown} not 'all' or among {TRIGGERS}")
  return names


def trigger_children(triggers) -> list[dict]:
  """--trigger=all or a comma list: each trigger in a fresh child process (this script,
  --trigger=NAME), their rows with the trigger named."""
  rows = []
  for trigger in triggers:
    with tempfile.TemporaryDirectory(prefix="trigger_") as folder:
      output = pathlib.Path(folder) / "rows.json"
      argv = [sys.executable, __file__, f"--trigger={trigger}", f"--dtype={_DTYPE.value}",
              f"--n_tokens={_N.value}", f"--new_tokens={_NEW.value}",
              f"--repeats={_REPEATS.value}", f"--stack_bytes={_STACK.value}",
              f"--output={output}"]
      argv += [f"--{name}={flag.value}" for name, flag in
               (("model", _MODEL), ("random_shape", _RANDOM), ("profile", _PROFILE),
                ("hlo_dir", _HLO_DIR))
               if flag.value]
      out = subprocess.run(argv, capture_output=True, text=True)
      print("\n".join(f"[{trigger}] {line}" for line in out.stdout.splitlines()), flush=True)
      if not output.exists():
        print(f"[{trigger}] failed (exit {out.returncode}): {out.stderr[-2000:]}", flush=True)
        continue
      rows += [dict(row, trigger=trigger) for row in json.loads(output.read_text())["rows"]]
  return rows


def random_model(name: str) -> Model:
  """SHAPES[name] with random weights, as load_model would set it up on this device."""
  attention = api.default_attention(_DTYPE.value)
  cfg = dataclasses.replace(SHAPES[name], attention=attention,
                            matmul_rows=api.default_matmul_rows(),
                            window_attention=api.default_window_attention(attention))
  params = model_lib.fuse_projections(model_lib.init_random_params(
      cfg, jax.random.PRNGKey(0), DTYPES[_DTYPE.value]))
  return Model(cfg, params, None, (), _DTYPE.value, f"random-{name}")


def load(path):
  if _RANDOM.value:
    model = random_model(_RANDOM.value)
    ids = np.random.default_rng(0).integers(100, model.cfg.vocab_size, _N.value).astype(np.int32)
  else:
    model = ks.load_model(path, dtype=_DTYPE.value)
    ids = datasets.encode(model.tokenizer, datasets.long_document_prompt(model.tokenizer,
                                                                         _N.value))
  if _PROFILE.value:
    model.profile = latency.LatencyProfile.load(_PROFILE.value)
  ks.generate(model, ids, _NEW.value, "ar", ignore_eos=True)  # compiles AR's programs
  return model, ids


def main(argv):
  if _RANDOM.value and _RANDOM.value not in SHAPES:
    raise app.UsageError(f"--random_shape={_RANDOM.value}: not one of {sorted(SHAPES)}")
  if _TRIGGER.value:
    chosen_triggers()  # a misspelt name stops here, before any child starts
  if _LOG_PATTERNS.value:
    _LOG.append(StderrLog(_LOG_PATTERNS.value))
    try:
      return stages(argv)
    except BaseException:  # stderr is a file now: the error must still reach the caller
      traceback.print_exc(file=sys.stdout)
      raise
  return stages(argv)


def stages(argv):
  del argv
  path = _MODEL.value
  if _TRIGGER.value and (_TRIGGER.value == "all" or "," in _TRIGGER.value):
    rows = trigger_children(chosen_triggers())
    write_rows(rows, _N.value)
    return
  if _STACK.value:
    jax.devices()  # XLA's client (and the primary context) first
    set_stack_limit(_STACK.value)
  model, ids = load(path)
  print(f"{model.name} {model.dtype} on {jax.devices()[0].device_kind}; {len(ids)} prompt tokens,"
        f" {_NEW.value} new, {_REPEATS.value} AR runs per stage", flush=True)
  rows = [ar_stage("fresh", model, ids)]
  if _TRIGGER.value:
    rows += trigger_stages(model, ids, _TRIGGER.value)
  elif _SEARCH_BISECT.value and not _CHILD.value:
    rows += search_stages(model, ids)
  elif not _CHILD.value:
    time.sleep(_IDLE_S.value)
    rows.append(ar_stage("idle", model, ids))
    big = jax.block_until_ready(jnp.zeros((int(_ALLOC_GB.value * 2**30) // 4,), jnp.float32))
    del big
    rows.append(ar_stage("alloc", model, ids))
    if _BISECT.value:
      rows += bisect_stages(model, ids)
    options = common.method_options(_METHOD_OPTIONS.value)
    for method in _OTHERS.value:
      r = ks.generate(model, ids, _NEW.value, method, ignore_eos=True,
                      **options.get(method, {}))
      print(f"  ran {method}: {r.tokens_per_s:.1f} tok/s, compile {r.compile_s:.1f} s",
            flush=True)
      rows.append(ar_stage(f"after_{method}", model, ids))
    if _BISECT.value and _OTHERS.value:  # which of the model's parts carries the slowdown
      # A new executable with CUDA graphs makes XLA drop every live one (EvictCommandBuffers in
      # CommandBufferThunk's constructor): AR's graphs are recorded anew on its next call.
      cfg = model.cfg
      skip = SkipMask.from_layers(cfg.n_layers, attn=[2, 9])
      state = abstract_state(model)
      compile_cache.jit_program(decoding.ARSegmentStatics(cfg, 512, skip=skip)).lower(
          model.params, state).compile()
      rows.append(ar_stage("graphs_evicted", model, ids))
      model.params = jax.block_until_ready(jax.tree.map(jnp.copy, model.params))
      rows.append(ar_stage("new_params", model, ids))
      model.compiled = compile_cache.CompileCache()
      ks.generate(model, ids, _NEW.value, "ar", ignore_eos=True)  # AR's programs, from the store
      rows.append(ar_stage("new_programs", model, ids))
    gc.collect()
    rows.append(ar_stage("gc_collect", model, ids))
    gc.freeze()
    gc.disable()
    rows.append(ar_stage("gc_freeze", model, ids))
    gc.enable()
    gc.unfreeze()
    del model
    gc.collect()
    model, ids = load(path)
    rows.append(ar_stage("new_model", model, ids))
    del model
    gc.collect()
    child = [sys.executable, __file__, "--child", f"--dtype={_DTYPE.value}",
             f"--n_tokens={_N.value}", f"--new_tokens={_NEW.value}",
             f"--repeats={_REPEATS.value}", "--output=/dev/null"]
    if path:
      child.append(f"--model={path}")
    if _RANDOM.value:
      child.append(f"--random_shape={_RANDOM.value}")
    out = subprocess.run(child, capture_output=True, text=True)
    print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:])
    for line in out.stdout.splitlines():
      if line.startswith("{"):
        rows.append(dict(json.loads(line), stage="child_fresh"))
  if _CHILD.value:
    print(json.dumps(rows[0]))
  write_rows(rows, len(ids))


def write_rows(rows: list[dict], prompt_tokens: int):
  """The stages' rows to --output (default $OUT/same_process_slowdown.json), unless /dev/null."""
  output = _OUTPUT.value or (os.environ.get("OUT") and
                             f"{os.environ['OUT']}/same_process_slowdown.json")
  if output and output != "/dev/null":
    pathlib.Path(output).write_text(json.dumps(dict(prompt_tokens=prompt_tokens,
                                                    new_tokens=_NEW.value, rows=rows),
                                               indent=1) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
  app.run(main)
