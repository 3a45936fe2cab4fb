"""What a new skip set costs: static masks, run-time gating, host dispatch and the compile worker
(issue 13 item 5).

  python experiments/gpu/switch_cost.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/switch_cost.py --smoke    # CPU: tiny shapes, checks the script runs

ModelConfig.draft_skip picks how a draft leaves out sublayers: "static" compiles one program per
skip set (4.9-14.2 s on the H200 for Qwen2.5-1.5B), "runtime" compiles one program that reads the
skip set from the decode state and runs each sublayer under a lax.cond (free to switch, but each
GPU cond waits for its predicate on the host: 1.3-1.5 ms more per draft step). A third way, this
script's "dispatch" (no ModelConfig option: a measurement first), drives a draft step from the
host as small programs compiled once for every layer (a layer's weights all have one shape):
embed, attention sublayer (its layer's keys and values donated, written in place), MLP
sublayer, whole layer, head (final norm, LM head, argmax); a step calls embed, then for each
layer in order the whole layer, its attention or its MLP, whichever the skip set keeps, then the
head, the token fed back as a device array (no host sync inside a loop). Any skip set runs with
no compile: a switch costs the Python that lists the calls. On the H200 each call cost 79-114 us
of host time (BENCHMARKS.md 10.22), perhaps XLA updating the program's CUDA graph for another
layer's buffers at every call: "dispatch_layers" compiles the sublayer programs once per layer
instead (each always sees its own layer's buffers), and the no_command_buffers flag set of
run_switch_cost.sh runs without CUDA graphs. For each skip set (attn:mlp counts of
skipped inner sublayers) and each mode of --modes this times, at one context, on device:
  draft     the draft decoding alone -> ms per step: decoding.ar_segment (static, runtime) or the
            host loop of dispatched calls (dispatch modes), `rounds` steps a loop;
  segment   spec_segment, threshold 0 (every round drafts gamma tokens) -> ms per round; for
            dispatch, gamma dispatched steps and a verify program compiled once per bucket,
            acceptance on device, nothing read back (checked against spec_segment's token and
            cursor after 4 rounds);
  switch    seconds from asking for the set to running it at steady speed: getting its
            segment program (static: a compile; runtime: a compile for the first set only, then
            nothing) plus its first call (decoding.with_skip for runtime) minus a later call;
            dispatch: listing the calls plus its first loop of draft steps minus a steady one,
            the one compile of its programs at the first set apart (compile_once_s);
with the kernels per loop body (metrics.loop_kernels), and for dispatch the calls per step and
the host's time per step and per call (the Python loop's time until its last call returns: near
the step's time when the host, not the device, sets the pace). Dispatch checks its first greedy
tokens against the static draft's (ar_segment with the set compiled in, from the same state):
"dispatch tokens == static tokens", asserted under --smoke (float32). Run it once per XLA flag
set (run_switch_cost.sh): a GPU conditional waits for its predicate on the host unless command
buffers (CUDA graphs) take the conditionals in. Records: $OUT/switch_cost.json (or --output).
"worker" (time_worker, run_switch_worker.sh) asks the compile worker (compile_cache.CompileWorker)
for each set's static-mask segment program while this process decodes AR, and times the switch
once it is loaded (see time_worker). The static and runtime modes get their programs from
CompileCache, which loads a program the executable store holds instead of compiling it: their
"switch" is a compile only with a fresh cache directory ($KNAPSPEC_CACHE) or the store off
(KNAPSPEC_EXEC_CACHE=0), and after worker mode in one run it is a load.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import statistics
import sys
import time
from typing import Callable, NamedTuple

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shapes import random_model, spread, write_records  # noqa: E402
from knapspec_jax import compile_cache, decoding, latency, metrics, speculative  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

MODES = ("static", "runtime", "dispatch", "dispatch_layers", "worker")
DISPATCH_MODES = ("dispatch", "dispatch_layers")
N_CHECK = 4  # greedy tokens of each set that dispatch checks against the static draft

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and loops (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_CONTEXT = flags.DEFINE_integer("context", 2000, "Cache cursor at the start.")
_GAMMA = flags.DEFINE_integer("gamma", 3, "Draft length of the segment.")
_SETS = flags.DEFINE_list("sets", ["0:0", "8:4", "16:12"], "Skip sets as attn:mlp counts of "
                          "skipped inner sublayers (spread evenly); 0:0 times the gating's cost "
                          "with nothing skipped.")
_MODES = flags.DEFINE_list("modes", [m for m in MODES if m != "worker"],
                          f"Draft modes to time, in this order, of {', '.join(MODES)} (worker "
                          f"needs the executable store: run_switch_worker.sh).")
_ROUNDS = flags.DEFINE_integer("rounds", 64, "Rounds (and steps) per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/switch_cost.json).")


def timed_get(compiled: CompileCache, statics, args):
  """(program, seconds CompileCache.get took: its compile and priming, 0 when cached)."""
  start = time.perf_counter()
  fn = compiled.get(statics, args)
  return fn, time.perf_counter() - start


class DispatchPrograms(NamedTuple):
  """The dispatch modes' programs at one attention bucket. "dispatch": each compiled once for
  every layer (attention, mlp and layer hold one program); "dispatch_layers": the sublayer
  programs once per layer (a program per layer index, each always called with its own layer's
  weight and cache buffers, so XLA never has to update its CUDA graph for another layer's
  buffers). top: the params without their layers; lp: one layer's; k, v: that layer's cache
  arrays (donated: written in place); pos: int32 [], the cursor, where the step's token goes."""

  embed: Callable  # (top, token, pos) -> (x [1, 1, D], cos, sin, pos + 1)
  attention: tuple  # of (lp, x, cos, sin, k, v, pos) -> (x, k, v)
  mlp: tuple  # of (lp, x) -> x
  layer: tuple  # attention, then mlp: of (lp, x, cos, sin, k, v, pos) -> (x, k, v)
  head: Callable  # (top, x) -> the greedy token, int32 [] on device

  def of(self, kind: str, i: int) -> Callable:
    """Layer i's program of `kind` (attention, mlp or layer)."""
    programs = getattr(self, kind)
    return programs[i if len(programs) > 1 else 0]

  def executables(self) -> int:
    """Executables compiled so far, all programs together (5, or 2 + 3 per layer with
    dispatch_layers, once each has run)."""
    fns = (self.embed, self.head, *self.attention, *self.mlp, *self.layer)
    return sum(getattr(fn, "_cache_size", lambda: -99)() for fn in fns)  # jit's count


def dispatch_programs(cfg, attn_len: int, per_layer: int = 0) -> DispatchPrograms:
  """DispatchPrograms from model.py's layer body (attention_sublayer, mlp_sublayer, block) with
  cfg's kernels and matmul padding, attending over the cache's first attn_len positions;
  per_layer: that many copies of each sublayer program (dispatch_layers), 0: one shared."""
  def embed(top, token, pos):
    cos, sin = model_lib.rope_tables(cfg, pos[None])
    return top["embed"][token.reshape(1, 1)], cos, sin, pos + 1

  def with_cache(sublayer):
    def run(lp, x, cos, sin, k_cache, v_cache, pos):
      # model.forward's attend_cache for one token at pos, over one layer's arrays (model.py
      # has no public helper for it, and gets none for a measurement)
      mask = (jnp.arange(attn_len, dtype=jnp.int32) <= pos)[None, None]
      kv_len = jnp.full((1,), pos + 1, jnp.int32)
      written = {}

      def attend_kv(q, k, v):
        for name, cache, new in (("k", k_cache, k), ("v", v_cache, v)):
          written[name] = jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype),
                                                       (0, pos, 0, 0))
        return model_lib.attend(cfg, q, written["k"], written["v"], mask, kv_len)

      x = sublayer(lp, cfg, x, cos, sin, attend_kv)
      return x, written["k"], written["v"]
    return jax.jit(run, donate_argnums=(4, 5))

  def head(top, x):
    h = model_lib.rms_norm(x, top["final_norm"], cfg.norm_eps)
    return decoding.next_token(model_lib.lm_head(top, cfg, h[0, 0]), None, None)[0]

  copies = range(max(per_layer, 1))  # each jax.jit of a new function: an executable of its own
  return DispatchPrograms(
      jax.jit(embed), tuple(with_cache(model_lib.attention_sublayer) for _ in copies),
      tuple(jax.jit(lambda lp, x: model_lib.mlp_sublayer(lp, cfg, x)) for _ in copies),
      tuple(with_cache(model_lib.block) for _ in copies), jax.jit(head))


def dispatch_plan(progs: DispatchPrograms, skip: SkipMask) -> list[tuple[Callable, int, bool]]:
  """A draft step's calls between embed and head, layer by layer: (program, layer, whether it
  takes the layer's cache); a layer with nothing kept has none."""
  plan = []
  for i in range(skip.n_layers):
    attn, mlp = not skip.skips_attn(i), not skip.skips_mlp(i)
    if attn or mlp:
      plan.append((progs.of("layer" if attn and mlp else "attention" if attn else "mlp", i), i,
                   attn))
  return plan


def verify_program(cfg, attn_len: int):
  """A dispatched round's verify, compiled once per (gamma, bucket) whatever the draft's skip
  set: the full model (model.forward, nothing skipped) over [token, d_1..d_gamma] at the cursor,
  greedy acceptance on device (speculative._round's rule). (params, token, drafts: gamma int32
  [] arrays, ks, vs: every layer's cache arrays, donated, pos) -> (the next pending token, the
  cursor after the accepted tokens, the accepted drafts, ks, vs): nothing goes to the host, so
  the next round's draft calls queue behind it."""
  def verify(params, token, drafts, ks, vs, pos):
    drafts = jnp.stack(drafts)
    window = jnp.concatenate([token[None], drafts])[None]
    out = model_lib.forward(params, cfg, window, KVCache(tuple(ks), tuple(vs), pos),
                            skip=SkipMask.none(cfg.n_layers), attn_len=attn_len)
    target = jnp.argmax(model_lib.lm_head(params, cfg, out.hidden[0]), axis=-1).astype(jnp.int32)
    accepted = jnp.sum(jnp.cumprod((drafts == target[:-1]).astype(jnp.int32)))
    return target[accepted], pos + accepted + 1, accepted, list(out.cache.k), list(out.cache.v)
  return jax.jit(verify, donate_argnums=(3, 4))


def dispatch_steps(progs: DispatchPrograms, plan, top, layers, token, pos, ks: list, vs: list,
                   steps: int, marks: list | None = None) -> list:
  """`steps` greedy draft steps from `token` at cursor `pos` (device arrays), call by call, the
  host never waiting for the device; ks, vs (the layers' cache arrays) are replaced in place by
  the donating calls' outputs; marks: gets time.perf_counter() as each step's last call returns.
  Returns the steps' tokens, on device."""
  tokens = []
  for _ in range(steps):
    x, cos, sin, next_pos = progs.embed(top, token, pos)
    for fn, i, cached in plan:
      if cached:
        x, ks[i], vs[i] = fn(layers[i], x, cos, sin, ks[i], vs[i], pos)
      else:
        x = fn(layers[i], x)
    token, pos = progs.head(top, x), next_pos
    tokens.append(token)
    if marks is not None:
      marks.append(time.perf_counter())
  return tokens


def time_dispatch(m, skips: list[SkipMask], attn_len: int, rounds: int, repeats: int,
                  static_compiled: CompileCache, smoke: bool, base: dict,
                  mode: str = "dispatch") -> list[dict]:
  """A dispatch mode's records, one per skip set (see the module docstring)."""
  per_layer = m.cfg.n_layers if mode == "dispatch_layers" else 0
  progs = dispatch_programs(m.cfg, attn_len, per_layer)
  top = {k: v for k, v in m.params.items() if k != "layers"}
  layers = m.params["layers"]
  cache = m.fresh_cache()  # the timed loops' cache: each loop rewrites the same positions
  ks, vs = list(cache.k), list(cache.v)
  token0, pos0 = jnp.zeros((), jnp.int32), cache.length
  # Every program once (the one compile of dispatch), on a copy of layer 0's cache arrays.
  k0, v0 = jnp.copy(ks[0]), jnp.copy(vs[0])
  jax.block_until_ready((k0, v0))
  start = time.perf_counter()
  x, cos, sin, _ = progs.embed(top, token0, pos0)
  for i in range(max(per_layer, 1)):  # layer 0's cache copy serves every program's compile
    x, k0, v0 = progs.of("attention", i)(layers[i], x, cos, sin, k0, v0, pos0)
    x, k0, v0 = progs.of("layer", i)(layers[i], x, cos, sin, k0, v0, pos0)
    x = progs.of("mlp", i)(layers[i], x)
  jax.block_until_ready(progs.head(top, x))
  compile_once_s = time.perf_counter() - start
  del k0, v0
  gamma = base["gamma"]
  verify = verify_program(m.cfg, attn_len)
  check_cache = m.fresh_cache()  # the verify's one compile, on a cache of its own
  start = time.perf_counter()
  jax.block_until_ready(verify(m.params, token0, [token0] * gamma, list(check_cache.k),
                               list(check_cache.v), pos0))
  verify_compile_s = time.perf_counter() - start
  del check_cache

  # The check's weights: under --smoke the tiny model's layers scaled 4x, since with its own
  # small random layers it repeats the token it is fed whatever the skip set.
  check_params = (dict(m.params, layers=jax.tree.map(lambda a: 4 * a, layers)) if smoke
                  else m.params)
  check_top = {k: v for k, v in check_params.items() if k != "layers"}

  def written(ks: list, vs: list):
    """The keys and values of the check's steps, every layer's, in float32 on the host."""
    return np.stack([jax.device_get(a[0, m.context:m.context + N_CHECK]).astype(np.float32)
                     for a in ks + vs])

  def check(skip: SkipMask, plan) -> tuple[bool, list, list, float]:
    """(tokens equal, dispatched tokens, static tokens, the largest difference between the keys
    and values they wrote): N_CHECK greedy steps each, from the same state."""
    statics = decoding.ARSegmentStatics(dataclasses.replace(m.cfg, draft_skip="static"),
                                        attn_len, skip=skip)
    state = m.fresh_state(N_CHECK + 1)
    draft = static_compiled.get(statics, (check_params, state))
    out = draft(check_params, state)
    static = jax.device_get(out.out[1:N_CHECK + 1]).tolist()
    static_kv = written(list(out.cache.k), list(out.cache.v))
    state = m.fresh_state(N_CHECK + 1)
    ks, vs = list(state.cache.k), list(state.cache.v)
    dispatched = [int(t) for t in jax.device_get(dispatch_steps(
        progs, plan, check_top, check_params["layers"], state.token, state.cache.length, ks, vs,
        N_CHECK))]
    return (dispatched == static, dispatched, static,
            float(np.max(np.abs(written(ks, vs) - static_kv))))

  def dispatch_rounds(plan, params, top, ks: list, vs: list, token, pos, n_rounds: int):
    """n_rounds rounds of gamma dispatched draft steps and the compiled verify (threshold 0:
    every round drafts gamma tokens), nothing read back; ks, vs replaced in place. Returns the
    pending token and the cursor after the last round, and the accepted drafts, on device."""
    accepted = []
    for _ in range(n_rounds):
      drafts = dispatch_steps(progs, plan, top, params["layers"], token, pos, ks, vs, gamma)
      token, pos, n_acc, ks[:], vs[:] = verify(params, token, drafts, ks, vs, pos)
      accepted.append(n_acc)
    return token, pos, accepted

  def check_rounds(skip: SkipMask, plan) -> tuple[bool, tuple, tuple]:
    """(equal, dispatched, static): the pending token and cursor after N_CHECK rounds of
    dispatch_rounds and of the static segment program (spec_segment, threshold 0), from the
    same state."""
    statics = speculative.SpecSegmentStatics(dataclasses.replace(m.cfg, draft_skip="static"),
                                             skip, gamma, attn_len)
    args = lambda: (check_params, m.fresh_state(N_CHECK * (gamma + 1) + 1),
                    speculative.SpecCounters.zeros(), jnp.asarray(N_CHECK, jnp.int32),
                    jnp.asarray(0.0, jnp.float32))
    state, _ = static_compiled.get(statics, args())(*args())
    static = (int(state.token), int(state.cache.length))
    state = m.fresh_state(1)
    token, pos, _ = dispatch_rounds(plan, check_params, check_top, list(state.cache.k),
                                    list(state.cache.v), state.token, state.cache.length,
                                    N_CHECK)
    dispatched = (int(token), int(pos))
    return dispatched == static, dispatched, static

  def round_loop(plan) -> tuple[float, float]:
    """Seconds of `rounds` dispatched rounds, and the accepted drafts per round."""
    start = time.perf_counter()
    token, _, accepted = dispatch_rounds(plan, m.params, top, ks, vs, token0, pos0, rounds)
    jax.block_until_ready(token)
    return time.perf_counter() - start, float(np.mean(jax.device_get(accepted)))

  def loop(plan) -> tuple[float, float, float]:
    """Seconds of `rounds` dispatched steps, until the host's last call returned, and until
    the first step's last call returned (the device idle at the start: no queue of launches
    holds the host back, as a full one may later in a device-bound loop)."""
    marks = []
    start = time.perf_counter()
    tokens = dispatch_steps(progs, plan, top, layers, token0, pos0, ks, vs, rounds, marks)
    jax.block_until_ready(tokens[-1])
    return time.perf_counter() - start, marks[-1] - start, marks[0] - start

  records = []
  for skip in skips:
    start = time.perf_counter()
    plan = dispatch_plan(progs, skip)
    plan_s = time.perf_counter() - start
    first = loop(plan)[0]
    times, hosts, host_firsts = zip(*(loop(plan) for _ in range(repeats)))
    steady, host = statistics.median(times), statistics.median(hosts)
    calls = len(plan) + 2  # embed and head
    equal, dispatched, static, kv_diff = check(skip, plan)
    round_loop(plan)  # warm-up
    round_times, accepts = zip(*(round_loop(plan) for _ in range(repeats)))
    rounds_equal, rounds_dispatched, rounds_static = check_rounds(skip, plan)
    record = dict(base, mode=mode, n_attn_skipped=len(skip.attn_skipped),
                  n_mlp_skipped=len(skip.mlp_skipped), ms_per_draft_step=steady / rounds * 1e3,
                  calls_per_step=calls, host_ms_per_step=host / rounds * 1e3,
                  host_us_per_call=host / (rounds * calls) * 1e6,
                  first_step_host_us_per_call=statistics.median(host_firsts) / calls * 1e6,
                  plan_s=plan_s, first_loop_s=first, steady_loop_s=steady,
                  switch_s=plan_s + max(first - steady, 0.0),
                  compile_once_s=compile_once_s if not records else 0.0,
                  executables=progs.executables(), tokens_equal_static=equal,
                  dispatch_tokens=dispatched, static_tokens=static, kv_max_diff=kv_diff,
                  ms_per_round=statistics.median(round_times) / rounds * 1e3,
                  accepted_per_round=statistics.median(accepts),
                  verify_compile_s=verify_compile_s if not records else 0.0,
                  rounds_equal_static=rounds_equal,
                  rounds_token_cursor=dict(dispatch=rounds_dispatched, static=rounds_static))
    records.append(record)
    label = (f"{mode} skip {record['n_attn_skipped']:2d} attn + {record['n_mlp_skipped']:2d} "
             f"mlp:")
    print(f"{label} draft {record['ms_per_draft_step']:7.3f} ms/step, {calls} calls/step, host "
          f"{record['host_ms_per_step']:7.3f} ms/step ({record['host_us_per_call']:5.1f} "
          f"us/call, first step {record['first_step_host_us_per_call']:5.1f}), switch "
          f"{record['switch_s']:7.3f} s (plan {plan_s * 1e3:5.2f} ms, first loop "
          f"{first * 1e3:7.1f} ms, steady {steady * 1e3:7.1f} ms), compile once "
          f"{record['compile_once_s']:6.2f} s | {record['executables']} executables", flush=True)
    print(f"{label} dispatch tokens == static tokens: {equal} ({dispatched} vs {static}; "
          f"keys and values written differ by at most {kv_diff:.2g})", flush=True)
    print(f"{label} round (gamma {gamma} dispatched + compiled verify) "
          f"{record['ms_per_round']:7.3f} ms, {record['accepted_per_round']:.2f} accepted, "
          f"verify compile {record['verify_compile_s']:5.2f} s; after {N_CHECK} rounds "
          f"(token, cursor) == static segment's: {rounds_equal} ({rounds_dispatched} vs "
          f"{rounds_static})", flush=True)
  if smoke:
    # The tiny model's sets run whole layers only: one more set runs every other call, attention
    # alone in odd layers, the MLP alone in even ones, checked but not timed.
    n = m.cfg.n_layers
    mixed = SkipMask.from_layers(n, attn=range(0, n, 2), mlp=range(1, n, 2))
    equal, dispatched, static, kv_diff = check(mixed, dispatch_plan(progs, mixed))
    print(f"{mode} attention-only and MLP-only calls: dispatch tokens == static tokens: "
          f"{equal} ({dispatched} vs {static}; keys and values written differ by at most "
          f"{kv_diff:.2g})", flush=True)
    assert equal and kv_diff < 1e-4, "dispatched draft differs from the static one (mixed calls)"
    for r in records:
      assert r["tokens_equal_static"] and r["kv_max_diff"] < 1e-4, (
          f"dispatched draft differs from the static one: {r}")
      assert r["executables"] == 2 + 3 * max(per_layer, 1), f"a skip set compiled: {r}"
      assert r["rounds_equal_static"], f"dispatched rounds differ from the static segment: {r}"
  return records


def first_and_steady(fn, make_args, repeats: int) -> tuple[float, float]:
  """Seconds of fn's first call on fresh arguments, and the median of `repeats` later calls."""
  args = make_args()
  jax.block_until_ready(args)
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  return first, latency.median_seconds(fn, make_args, repeats)


def time_worker(m, skips: list[SkipMask], attn_len: int, rounds: int, repeats: int,
                smoke: bool, base: dict) -> list[dict]:
  """The worker mode's records, one per skip set: static-mask segment programs compiled by the
  compile worker (compile_cache.CompileWorker, a separate process) into the executable store
  while this process decodes AR, then loaded here in a background thread (CompileCache.get_async,
  mode "process"). switch_s is the decoding thread's wait at the call that returns the program
  plus what its first call costs over a later one; worker_s, from the request to the program
  ready here; AR's ms per step alone, beside the worker's compile and beside the load, and
  alone again after the load for as many loops as ran beside it (means, each loop's outliers
  counted): decoding_lost_s, the loops beside it over as many loops alone, is what the switch
  costs the decoding meanwhile. The loaded program's pending token and cursor
  after `rounds` rounds are checked against the same set compiled in this process, for the
  first set (every set under --smoke)."""
  cfg, gamma = m.cfg, base["gamma"]
  compiled = CompileCache()  # this process's programs: AR, and the sets once loaded
  ar_statics = decoding.ARSegmentStatics(cfg, attn_len)
  ar_args = lambda: (m.params, m.fresh_state(rounds + 1))
  ar = compiled.get(ar_statics, ar_args())
  t_ar = latency.median_seconds(ar, ar_args, repeats) / rounds

  def ar_loop() -> tuple[float, float]:
    """(start, end) of one AR loop of `rounds` steps, its arguments ready before the clock."""
    args = ar_args()
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(ar(*args))
    return start, time.perf_counter()

  started = time.perf_counter()
  compiled.start_worker(wait=True)  # as KnapSpec's warm-up does: not a switch's cost
  start_s = time.perf_counter() - started
  seg_args = lambda: (m.params, m.fresh_state(rounds * (gamma + 1) + 1),
                      speculative.SpecCounters.zeros(), jnp.asarray(rounds, jnp.int32),
                      jnp.asarray(0.0, jnp.float32))
  records = []
  for i, skip in enumerate(skips):
    statics = speculative.SpecSegmentStatics(cfg, skip, gamma, attn_len)
    stats = compiled.stats
    loads_before, load_s_before = stats.background_loaded, stats.background_load_s
    compiles_before = stats.compiles + stats.background_compiles
    loops = []  # (start, end) of each AR loop beside the worker's compile and the load
    request = seg_args()  # what the decode loop would pass: its shapes name the program
    start = time.perf_counter()
    while True:
      ask = time.perf_counter()
      seg = compiled.get_async(statics, request, "process")
      if seg is not None:
        ready_wait = time.perf_counter() - ask  # what the decoding thread waits at the switch
        break
      loops.append(ar_loop())  # decoding goes on beside the worker's compile, then the load
    ready_at = time.perf_counter()
    worker_s = ready_at - start
    if (stats.background_loaded != loads_before + 1
        or stats.compiles + stats.background_compiles != compiles_before):
      raise RuntimeError(f"skip set {i}: the program was not loaded from the store ({stats})")
    load_s = stats.background_load_s - load_s_before  # in the background thread
    ms_step = lambda sel: (sum(e - b for b, e in sel) / (len(sel) * rounds) * 1e3
                           if sel else None)
    # AR loops that ended while the background thread loaded (its last load_s before ready);
    # the rest ran beside the worker's compile
    loading = [(b, e) for b, e in loops if e > ready_at - load_s]
    compiling = [(b, e) for b, e in loops if e <= ready_at - load_s]
    first, t_seg = first_and_steady(seg, seg_args, repeats)
    # AR alone again, as many loops as ran beside the worker and the load (the worker idle, the
    # program loaded): the paired baseline of what the decoding lost meanwhile
    alone = [ar_loop() for _ in range(max(len(loops), repeats))]
    alone_loop_s = sum(e - b for b, e in alone) / len(alone)
    lost_s = sum(e - b for b, e in loops) - len(loops) * alone_loop_s
    equal = None
    if smoke or i == 0:
      own = CompileCache().get(statics, seg_args())  # compiled here: the reference
      got, want = seg(*seg_args())[0], own(*seg_args())[0]
      equal = (int(got.token), int(got.cache.length)) == (int(want.token), int(want.cache.length))
      if not equal:
        raise RuntimeError(f"skip set {i}: the loaded program's token and cursor differ from the "
                           f"one compiled here")
    record = dict(base, mode="worker", n_attn_skipped=len(skip.attn_skipped),
                  n_mlp_skipped=len(skip.mlp_skipped), ms_per_round=t_seg / rounds * 1e3,
                  worker_s=worker_s, background_load_s=load_s, ready_wait_s=ready_wait,
                  first_call_s=first, steady_call_s=t_seg,
                  switch_s=ready_wait + max(first - t_seg, 0.0),
                  ar_ms_per_step=t_ar * 1e3,
                  ar_ms_per_step_while_compiling=ms_step(compiling),
                  ar_loops_while_compiling=len(compiling),
                  ar_ms_per_step_while_loading=ms_step(loading),
                  ar_loops_while_loading=len(loading),
                  ar_ms_per_step_alone_after=ms_step(alone), ar_loops_alone_after=len(alone),
                  decoding_lost_s=lost_s, equal_to_own_compile=equal,
                  worker_start_s=start_s if not records else 0.0)
    records.append(record)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"worker  skip {record['n_attn_skipped']:2d} attn + {record['n_mlp_skipped']:2d} mlp: "
          f"round {record['ms_per_round']:7.3f} ms, switch {record['switch_s']:6.3f} s (wait "
          f"{ready_wait:6.3f} s, first call {first * 1e3:7.1f} ms, steady {t_seg * 1e3:7.1f} ms), "
          f"worker {worker_s:6.2f} s, then a load of {load_s:5.2f} s in the background; AR "
          f"{t_ar * 1e3:.3f} ms/step alone, {fmt(record['ar_ms_per_step_while_compiling'])} beside "
          f"the worker ({len(compiling)} loops), {fmt(record['ar_ms_per_step_while_loading'])} "
          f"beside the load ({len(loading)} loops), {fmt(record['ar_ms_per_step_alone_after'])} "
          f"alone after it ({len(alone)} loops): decoding lost {lost_s:6.3f} s; equal to this "
          f"process's compile: {equal}",
          flush=True)
  return records


def main(argv):
  del argv
  smoke = _SMOKE.value
  modes = _MODES.value
  if unknown := sorted(set(modes) - set(MODES)):
    raise app.UsageError(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
  if "worker" in modes and compile_cache.executable_store_dir() is None:
    raise app.UsageError(f"--modes=worker needs the executable store, which is off here "
                         f"({compile_cache.EXECUTABLE_STORE_ENV} or "
                         f"{compile_cache.PERSISTENT_CACHE_ENV} is 0)")
  rounds, repeats = (4, 2) if smoke else (_ROUNDS.value, _REPEATS.value)
  gamma = _GAMMA.value
  m = random_model(_MODEL.value, _CONTEXT.value, smoke)
  context, capacity = m.context, m.capacity
  read_gbps = latency.read_bandwidth(64 << 20 if smoke else None)
  device = latency.device_name()
  flags_env = os.environ.get("XLA_FLAGS", "")
  print(f"{device} | jax {jax.__version__} | {m.name} | context {context} | gamma {gamma} | "
        f"XLA_FLAGS='{flags_env}' | {rounds} rounds x {repeats} loops", flush=True)
  attn_len = attn_bucket(context + rounds * (gamma + 1) + gamma + 1, capacity)
  skips = []
  for spec in (["0:0", "1:1"] if smoke else _SETS.value):
    n_attn, n_mlp = (int(x) for x in spec.split(":"))
    n = m.cfg.n_layers
    skips.append(SkipMask.from_layers(n, attn=spread(n, n_attn) if n_attn else (),
                                      mlp=spread(n, n_mlp) if n_mlp else ()))
  # The static programs, shared with dispatch's check of its tokens (a static draft compiled
  # once serves both).
  static_compiled = CompileCache()
  records = []
  base = dict(model=m.name, device=device, xla_flags=flags_env, context=context,
              attn_len=attn_len, gamma=gamma, read_gbps=read_gbps,  # every record's run fields
              segment_graphs=m.cfg.segment_graphs)  # load_model's default (on one GPU since 41)
  for mode in modes:
    if mode == "worker":
      records += time_worker(m, skips, attn_len, rounds, repeats, smoke, base)
      continue
    if mode in DISPATCH_MODES:
      records += time_dispatch(m, skips, attn_len, rounds, repeats, static_compiled, smoke, base,
                               mode)
      continue
    cfg = dataclasses.replace(m.cfg, draft_skip=mode)
    compiled = static_compiled if mode == "static" else CompileCache()
    for skip in skips:
      gated = mode == "runtime"
      place = (lambda s: decoding.with_skip(s, skip)) if gated else (lambda s: s)
      seg_args = lambda: (m.params, place(m.fresh_state(rounds * (gamma + 1) + 1)),
                          speculative.SpecCounters.zeros(), jnp.asarray(rounds, jnp.int32),
                          jnp.asarray(0.0, jnp.float32))
      # The gated programs are timed with nothing skipped too: what the conds cost by themselves.
      seg_statics = (speculative.SpecSegmentStatics(cfg, SkipMask.none(cfg.n_layers), gamma,
                                                    attn_len, gated=True) if gated
                     else speculative.SpecSegmentStatics(cfg, skip, gamma, attn_len))
      draft_statics = (decoding.ARSegmentStatics(cfg, attn_len, gated=True) if gated
                       else decoding.ARSegmentStatics(cfg, attn_len, skip=skip))
      seg, seg_compile = timed_get(compiled, seg_statics, seg_args())
      # `rounds` steps: the state's first token counts as one of max_new (ar_segment)
      ar_args = lambda: (m.params, place(m.fresh_state(rounds + 1)))
      draft, _ = timed_get(compiled, draft_statics, ar_args())
      # The first call with this skip set (for the gated program: a set it has not run yet,
      # since the compile primed it with nothing skipped), then the steady calls.
      first, t_seg = first_and_steady(seg, seg_args, repeats)
      t_draft = latency.median_seconds(draft, ar_args, repeats) / rounds
      # From asking for the set to running it at steady speed: its program's get (a compile, or
      # nothing once the gated program exists) and what its first call costs over a later one.
      switch_s = seg_compile + max(first - t_seg, 0.0)
      kernels = {k: sum(metrics.loop_kernels(f.as_text()).values())
                 for k, f in (("segment", seg), ("draft", draft))}
      record = dict(base, mode=mode, n_attn_skipped=len(skip.attn_skipped),
                    n_mlp_skipped=len(skip.mlp_skipped), ms_per_round=t_seg / rounds * 1e3,
                    ms_per_draft_step=t_draft * 1e3, segment_get_s=seg_compile,
                    first_call_s=first, steady_call_s=t_seg, switch_s=switch_s,
                    kernels_per_body=kernels)
      records.append(record)
      print(f"{mode:7s} skip {record['n_attn_skipped']:2d} attn + {record['n_mlp_skipped']:2d} "
            f"mlp: draft {t_draft * 1e3:7.3f} ms/step, round {t_seg / rounds * 1e3:7.3f} ms, "
            f"switch {switch_s:7.3f} s (get {seg_compile:6.2f} s, first call {first * 1e3:7.1f} "
            f"ms, steady {t_seg * 1e3:7.1f} ms) | kernels per body {kernels}", flush=True)
  out = write_records(records, _OUTPUT.value, "switch_cost.json")
  print(f"wrote {out} ({len(records)} records)")


if __name__ == "__main__":
  app.run(main)
