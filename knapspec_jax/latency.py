"""Latency profile: what the compiled draft and verify steps of this project cost on this device.

Measured once per (device, model, dtype) by timing the project's own on-device decode loop with
several skip masks at several attention lengths, and verify forwards of several window sizes,
then fitted to

  t_step(n_attn, n_mlp, n) = c0 + n_attn * (a0 + a1 * n) + n_mlp * m      (one draft token)
  t_verify(T, n)           = t_step(L, L, n) + (T - 1) * (v0 + v1 * n)     (T-token full forward)

where n is the attention length the step runs at (its bucket: attention cost follows the
bucket, not the exact context). Where the profile timed several attention lengths, an attention
sublayer's cost is not that line but the costs fitted at each length (`attn_knots`), joined
linearly and continued past the longest with the slope of the last two: on the H200 the line
through 256 / 2K / 6K positions predicted Qwen2.5-1.5B's AR step at 28K positions at 2.87 ms,
the knots at 2.40 ms, and the step measured 2.12 ms (BENCHMARKS.md 10.8); measure() therefore
times lengths up to the model's context. The fit, the raw samples and its error are stored as
JSON, with the device's read bandwidth (read_bandwidth: a sum over a large array), the yardstick
for how close a step runs to the memory-bound floor (metrics.bandwidth).

Each step and verify cost is the slope of a program's call time over two loop lengths (`steps`
and LOOP_RATIO x `steps` steps per call), not one call's time over its steps: every call of a
compiled decode loop costs a fixed 1.6-2.1 ms beyond its steps on the H200, which a 16-32 step
loop spread over its steps as 0.05-0.13 ms each (experiments/gpu/profile_gap.py, BENCHMARKS.md
10.28). The intercept is kept as `call_s`, what one call (a decode window) costs beyond its steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import compile_cache, decoding, sharding
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask

PROFILE_DIR = pathlib.Path(__file__).resolve().parents[1] / "profiles"
# measure() settings for a first look on a device without a stored profile (the notebooks, and
# load_or_measure on a CPU): two attention lengths and three verify windows: 16 compiled programs
# instead of 27. Its fit is coarser; the committed profiles come from full measurements
# (experiments/measure_profile.py). SmolLM2 in float32 on a 2-vCPU Intel Xeon: 136 s
# (`measure_profile.py --quick`), against about 12 minutes for the full one inside the README's
# main command (sessions 29-30, BENCHMARKS.md 10.34).
QUICK_MEASURE = dict(attn_lens=(256, 2048), windows=(1, 4, 11), steps=8, repeats=3)
# measure() times each program at `steps` and LOOP_RATIO x `steps` steps per call; the slope is
# the cost per step, the intercept the cost per call (see the module docstring).
LOOP_RATIO = 4


def device_name() -> str:
  """A stable name for the backend's hardware, e.g. 'NVIDIA H100 80GB HBM3' or the CPU model."""
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    return dev.device_kind
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return f"cpu: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
  except OSError:
    pass
  return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


@dataclasses.dataclass(frozen=True)
class LatencyProfile:
  """Fitted step costs in seconds. See the module docstring for the model."""

  device: str
  model: str
  dtype: str
  n_layers: int
  c0: float
  a0: float
  a1: float
  m: float
  v0: float
  v1: float
  search_c0: float = 0.0  # knapsack search: search_c0 + search_c1 * attn_len seconds
  search_c1: float = 0.0
  segment_compile_s: float = 0.0  # compiling one speculation segment program (a new skip set)
  step_samples: tuple = ()  # (n_attn, n_mlp, attn_len, seconds)
  verify_samples: tuple = ()  # (T, attn_len, seconds)
  search_samples: tuple = ()  # (attn_len, seconds)
  read_gbps: float | None = None  # the device's read bandwidth, GB/s (None: not measured)
  # ((n, seconds), ...): one attention sublayer's cost fitted at each timed attention length
  # (attention_knots); () where fewer than two were timed: then the line a0 + a1 * n.
  attn_knots: tuple = ()
  # Seconds a draft step costs beyond the fit: what run-time gating's conds add to every step of
  # a draft (ModelConfig.draft_skip == "runtime"; measure() times the gated program with nothing
  # skipped against AR's); 0 for static masks, whose drafts are programs without the conds.
  draft_gate_s: float = 0.0
  # Seconds one call of a compiled decode loop costs beyond its steps (the median intercept of
  # measure()'s two loop lengths): what each decode window pays once. 0: not measured (profiles
  # stored before session 24 timed one loop length, this cost spread over its steps).
  call_s: float = 0.0
  # Seconds a draft step saves by scoring its vocabulary of ModelConfig.draft_vocab tokens
  # instead of all (measure() times AR's step with the draft's head against its own); 0 without.
  draft_head_s: float = 0.0
  # The generation's forward width (generate(width=), at_width): every full-model forward, AR's
  # steps and each verify alike, then runs over this many positions and costs t_verify(width, n);
  # draft steps keep their natural width. None: the natural widths, what measure() timed.
  width: int | None = None

  def t_attn(self, n: int) -> float:
    """Seconds of one attention sublayer for one token at attention length n (positions)."""
    if not self.attn_knots:
      return self.a0 + self.a1 * n
    (n0, t0), (n1, t1) = self.attn_knots[-2:]
    if n > n1:  # past the longest length timed: its last segment's slope
      return t1 + (n - n1) * max(t1 - t0, 0.0) / (n1 - n0)
    knots = np.asarray(self.attn_knots)
    return float(np.interp(n, knots[:, 0], knots[:, 1]))

  @property
  def t_mlp(self) -> float:
    """Seconds of one MLP sublayer for one token."""
    return self.m

  def at_width(self, width: int | None) -> "LatencyProfile":
    """This profile pricing every full-model forward at `width` positions (None: natural), as a
    generation at that width runs them (controller.run's width): AR's step then costs a verify
    of `width`, not the natural step, and so does every verify whatever its draft length."""
    return self if width == self.width else dataclasses.replace(self, width=width)

  def t_step(self, skip: SkipMask | None, n: int) -> float:
    """One token through the draft (skip=None: the full model), at attention length n; at a
    width (at_width), the full model's step is a forward of that width."""
    if skip is None and self.width:
      return self._forward(self.width, n)
    n_attn = self.n_layers - (len(skip.attn_skipped) if skip else 0)
    n_mlp = self.n_layers - (len(skip.mlp_skipped) if skip else 0)
    draft = skip is not None and skip.n_skipped
    return self._step(n_attn, n_mlp, n) + (self.draft_gate_s - self.draft_head_s if draft else 0.0)

  def _step(self, n_attn, n_mlp, n):
    return self.c0 + n_attn * self.t_attn(n) + n_mlp * self.m

  def t_verify(self, window: int, n: int) -> float:
    """Seconds of one full-model forward of `window` tokens at attention length n (at a width,
    at_width, of that width)."""
    return self._forward(self.width or window, n)

  def _forward(self, window, n):
    return self._step(self.n_layers, self.n_layers, n) + (window - 1) * (self.v0 + self.v1 * n)

  def search_s(self, n: int) -> float:
    """Predicted seconds of one knapsack search at attention length n."""
    return max(self.search_c0 + self.search_c1 * n, 0.0)

  def scaled(self, attn: float = 1.0, mlp: float = 1.0, fixed: float = 1.0,
             verify: float = 1.0) -> "LatencyProfile":
    """A what-if profile (e.g. a larger model's cost structure); measured samples are dropped."""
    return dataclasses.replace(self, c0=self.c0 * fixed, a0=self.a0 * attn, a1=self.a1 * attn,
                               attn_knots=tuple((n, t * attn) for n, t in self.attn_knots),
                               m=self.m * mlp, v0=self.v0 * verify, v1=self.v1 * verify,
                               step_samples=(), verify_samples=(), search_samples=(),
                               device=self.device + " (scaled)")

  def errors(self) -> dict:
    """Median relative error of the fit on its own samples (step and verify)."""
    step = [abs(self._step(a, m_, n) - t) / t for a, m_, n, t in self.step_samples]
    ver = [abs(self._forward(w, n) - t) / t for w, n, t in self.verify_samples]
    return {"step_median_rel_err": float(np.median(step)) if step else None,
            "verify_median_rel_err": float(np.median(ver)) if ver else None}

  # ------------------------------------------------------------------------------- storage
  @staticmethod
  def path_for(device: str, model: str, dtype: str, directory=None) -> pathlib.Path:
    safe = lambda s: "".join(c if c.isalnum() or c in "-._" else "_" for c in s)
    return pathlib.Path(directory or PROFILE_DIR) / f"{safe(device)}__{safe(model)}__{dtype}.json"

  def save(self, path=None) -> pathlib.Path:
    """Writes the profile as JSON to `path`: a file, or a directory (an existing one, or a path
    without a .json suffix) that gets the file path_for names; None: the repository's profiles/.
    Returns the file written."""
    path = pathlib.Path(path) if path else None
    if path is None or path.is_dir() or path.suffix != ".json":
      path = self.path_for(self.device, self.model, self.dtype, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dataclasses.asdict(self) | {"fit_errors": self.errors()}
    del payload["width"]  # what was measured, the natural widths: at_width is the caller's
    path.write_text(json.dumps(payload, indent=1))
    return path

  @classmethod
  def load(cls, path) -> "LatencyProfile":
    raw = json.loads(pathlib.Path(path).read_text())
    raw.pop("fit_errors", None)
    raw["step_samples"] = tuple(tuple(s) for s in raw.get("step_samples", ()))
    raw["verify_samples"] = tuple(tuple(s) for s in raw.get("verify_samples", ()))
    raw["search_samples"] = tuple(tuple(s) for s in raw.get("search_samples", ()))
    if "attn_knots" in raw:
      raw["attn_knots"] = tuple(tuple(k) for k in raw["attn_knots"])
    else:  # stored before the knots: fixed, MLP and attention costs refitted from its samples
      per_length = attention_knots(raw["step_samples"])
      if per_length is not None:
        raw["c0"], raw["m"], raw["attn_knots"] = per_length
    return cls(**raw)


# Bytes summed by read_bandwidth: 8 GiB on a GPU (at most a quarter of its memory), 512 MiB on
# a CPU. Large enough that the launch is noise; a GPU's caches hold a few hundred MiB at most.
BANDWIDTH_BYTES = {"gpu": 8 << 30, "cpu": 512 << 20}
_bandwidth_measured: dict[str, float] = {}


def read_bandwidth(n_bytes: int | None = None, repeats: int = 5) -> float:
  """The device's read bandwidth in GB/s (1e9 bytes): n_bytes of float32 summed by one
  compiled reduction, median of `repeats` timed runs after a warm-up. With the default size it
  is measured once per process and device."""
  dev = jax.devices()[0]
  if n_bytes is None:
    if device_name() not in _bandwidth_measured:
      n_bytes = BANDWIDTH_BYTES.get(dev.platform, BANDWIDTH_BYTES["gpu"])
      limit = (dev.memory_stats() or {}).get("bytes_limit") if dev.platform != "cpu" else None
      n_bytes = min(n_bytes, limit // 4) if limit else n_bytes
      _bandwidth_measured[device_name()] = read_bandwidth(n_bytes, repeats)
    return _bandwidth_measured[device_name()]
  data = jnp.ones((n_bytes // 4096, 1024), jnp.float32)  # 2-D: no 2**31-element axis at 8 GiB
  total = jax.jit(jnp.sum).lower(data).compile()
  jax.block_until_ready(total(data))
  return n_bytes / 1e9 / median_seconds(total, lambda: (data,), repeats)


def device_read_gbps(profile: "LatencyProfile | None" = None) -> float:
  """The read bandwidth stored with the profile, else measured here (once per process)."""
  if profile is not None and profile.read_gbps and profile.device == device_name():
    return profile.read_gbps
  return read_bandwidth()


def random_cache(cfg: ModelConfig, dtype, length: int, key, placement=None) -> KVCache:
  """A cache filled with random keys/values (timing on zeros can mislead) and its cursor set;
  placement: KVCache.create's sharding (the cache a tensor-parallel model decodes with)."""
  cache = KVCache.create(cfg, dtype, sharding=placement)
  keys = jax.random.split(key, 2 * cfg.n_layers)
  fill = lambda a, k: jax.random.normal(k, a.shape, jnp.float32).astype(a.dtype)
  if placement is not None:
    fill = lambda a, k, plain=fill: jax.device_put(plain(a, k), placement)
  return KVCache(k=tuple(fill(a, k) for a, k in zip(cache.k, keys[::2])),
                 v=tuple(fill(a, k) for a, k in zip(cache.v, keys[1::2])),
                 length=jnp.asarray(length, jnp.int32))


def verify_loop(params, cache, tokens, n_iter, *, cfg, attn_len):
  """n_iter verify forwards of a T-token window at the same cursor, on device; each window is
  the previous one's greedy tokens, as in a speculation round."""
  def body(_, carry):
    c, window = carry
    out = model_lib.forward(params, cfg, window, c, skip=SkipMask.none(cfg.n_layers),
                            attn_len=attn_len)
    target = jnp.argmax(model_lib.lm_head(params, cfg, out.hidden), axis=-1).astype(jnp.int32)
    return out.cache.rollback(c.length), target
  return jax.lax.fori_loop(0, n_iter, body, (cache, tokens))


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class VerifyLoopStatics:
  """verify_loop's static settings: the profiler's timed verify forwards."""

  cfg: ModelConfig
  attn_len: int
  donate_argnums = (1,)  # the cache

  def run(self, params, cache, tokens, n_iter):
    return verify_loop(params, cache, tokens, n_iter, cfg=self.cfg, attn_len=self.attn_len)


def median_seconds(fn, make_args, repeats: int) -> float:
  """Median wall seconds of fn(*make_args()) over `repeats` calls, fresh arguments each time
  (made and ready before the clock starts), the result waited for."""
  times = []
  for _ in range(repeats):
    args = make_args()
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def loop_cost(fn, make_args_for, short: int, long: int, repeats: int) -> tuple[float, float]:
  """(seconds per step, seconds per call) of fn, whose call on make_args_for(n) runs an n-step
  loop: the line through its median call times at n = short and n = long. A line the noise
  made non-positive in its slope or negative at no steps (a busy CPU: a fresh clone's test run
  measured a call at -0.3 ms) falls back to the long loop's time over its steps, no call cost."""
  t_short = median_seconds(fn, lambda: make_args_for(short), repeats)
  t_long = median_seconds(fn, lambda: make_args_for(long), repeats)
  per_step = (t_long - t_short) / (long - short)
  per_call = t_short - short * per_step
  if per_step <= 0 or per_call < 0:
    return t_long / long, 0.0
  return per_step, per_call


def profile_masks(n_layers: int) -> list[SkipMask]:
  """Masks that separate attention and MLP costs: full, inner attention off, inner MLP off, both
  halves off."""
  inner = range(1, n_layers - 1)
  return [SkipMask.none(n_layers), SkipMask.from_layers(n_layers, attn=inner),
          SkipMask.from_layers(n_layers, mlp=inner),
          SkipMask.from_layers(n_layers, attn=inner[::2], mlp=inner[1::2])]


def measure(params, cfg: ModelConfig, dtype, model_name: str, *,
            attn_lens=(256, 2048, 6144, 16384, 28672),
            windows=(1, 4, 8, 11), steps: int = 16, repeats: int = 3, n_ref: int = 16,
            compiled: CompileCache | None = None, log=print) -> LatencyProfile:
  """Times the project's compiled decode loop and verify forwards and fits the profile: each
  program at `steps` and LOOP_RATIO x `steps` steps per call (loop_cost), median of `repeats`."""
  compiled = CompileCache() if compiled is None else compiled
  capacity = KVCache.capacity_for(cfg)
  long = LOOP_RATIO * steps
  timed = [a for a in attn_lens if a + max(steps, max(windows)) <= capacity]
  attn_lens = [a for a in timed if a >= long + 2]
  if not attn_lens:
    raise ValueError(f"no attention length in {timed} holds a {long}-step loop ({LOOP_RATIO} x "
                     f"steps={steps}): choose fewer steps or longer lengths")
  key = jax.random.PRNGKey(0)
  step_samples, verify_samples, search_samples, compile_times, gate_samples = [], [], [], [], []
  head_samples = []  # AR's step with the draft's vocabulary against its own (draft_head_s)
  # drafts score cfg.draft_vocab tokens, here the first ids (which ones does not change the cost)
  draft = decoding.draft_vocabulary(params, cfg, (), ())
  call_samples = []  # intercepts of the step programs' call times (LatencyProfile.call_s)
  eos = ()
  for attn_len in attn_lens:
    # the cache filled up to the bucket; each loop starts where it ends at attn_len - 1
    base = random_cache(cfg, dtype, attn_len - 1, key,
                        sharding.cache_sharding(cfg, sharding.mesh_of(params)))

    def time_steps(statics, skip) -> float:
      """Seconds per step of the draft program `statics` decoding with `skip`."""
      def make_args(n=steps):
        cache = jax.tree.map(jnp.copy, base.rollback(attn_len - n - 1))
        state = decoding.init_state(cache, jnp.zeros((cfg.vocab_size,), jnp.float32),
                                    n + 1, eos, draft=jax.tree.map(jnp.copy, draft))
        return params, decoding.with_skip(state, skip)
      before = compiled.stats.compile_s
      fn = compiled.get(statics, make_args())
      if compiled.stats.compile_s > before:  # not a program compiled already (AR's, a gated one)
        compile_times.append(compiled.stats.compile_s - before)
      per_step, per_call = loop_cost(fn, make_args, steps, long, repeats)
      call_samples.append(per_call)
      return per_step

    # The draft's program as the rounds run it (under draft_skip="runtime" one that reads the
    # skip set from the state); the full-model mask asks for AR's own program, so a later
    # generation reuses this compile.
    times = {skip: time_steps(decoding.draft_program(cfg, attn_len, skip), skip)
             for skip in profile_masks(cfg.n_layers)}
    gate = 0.0
    if cfg.draft_skip == "runtime":  # what the conds cost a draft step: the gated program with
      none = SkipMask.none(cfg.n_layers)  # nothing skipped against AR's step (draft_gate_s)
      gate = time_steps(decoding.ARSegmentStatics(cfg, attn_len, gated=True), none) - times[none]
      gate_samples.append(gate)
      log(f"  gated attn_len={attn_len:5d}: {gate * 1e3:+8.3f} ms per draft step over AR's")
    head = 0.0
    if draft is not None:  # what the draft's smaller head saves a step (draft_head_s)
      none = SkipMask.none(cfg.n_layers)
      head = times[none] - time_steps(decoding.ARSegmentStatics(cfg, attn_len, draft_head=True),
                                      none)
      head_samples.append(head)
      log(f"  draft head attn_len={attn_len:5d}: {head * 1e3:+8.3f} ms saved per draft step")
    for skip, seconds in times.items():
      n_attn, n_mlp = cfg.n_layers - len(skip.attn_skipped), cfg.n_layers - len(skip.mlp_skipped)
      log(f"  step  attn_len={attn_len:5d} attn={n_attn:2d} mlp={n_mlp:2d}: {seconds*1e3:8.3f} ms")
      # The fit describes the sublayers with the whole head, as for static masks; draft_gate_s
      # and draft_head_s put the conds and the draft's head back.
      step_samples.append((n_attn, n_mlp, attn_len,
                           seconds - (gate - head if skip.n_skipped else 0.0)))
    at = base.rollback(attn_len - max(steps, max(windows)) - 1)
    for window in windows:
      tokens = jnp.ones((1, window), jnp.int32)
      make_args = lambda n=steps: (params, jax.tree.map(jnp.copy, at), tokens,
                                   jnp.asarray(n, jnp.int32))
      fn = compiled.get(VerifyLoopStatics(cfg, attn_len), make_args())
      seconds = loop_cost(fn, make_args, steps, long, repeats)[0]
      verify_samples.append((window, attn_len, seconds))
      log(f"  verify attn_len={attn_len:5d} T={window:2d}: {seconds*1e3:8.3f} ms")
    from knapspec_jax import knapsack
    p0 = attn_len - n_ref
    tokens = jnp.ones((n_ref,), jnp.int32)
    base = base.rollback(p0)
    run = lambda: knapsack.search(params, cfg, base, tokens, p0, 1, 1, compiled,
                                  attn_len=attn_len, chunk=knapsack.default_chunk(cfg.n_layers))
    jax.block_until_ready(run())
    seconds = median_seconds(lambda: run(), lambda: (), repeats)
    search_samples.append((attn_len, seconds))
    log(f"  search attn_len={attn_len:5d} R={n_ref}: {seconds*1e3:8.1f} ms")
  # A speculation segment holds a draft loop and a verify forward: about two decode loops.
  segment_compile = 2 * float(np.median(compile_times)) if compile_times else 0.0
  profile = fit(step_samples, verify_samples, device_name(), model_name,
                str(jnp.dtype(dtype)), cfg.n_layers, search_samples, segment_compile)
  gbps = read_bandwidth()
  log(f"  read bandwidth: {gbps:.1f} GB/s")
  gate = float(np.median(gate_samples)) if gate_samples else 0.0
  if gate_samples:
    log(f"  run-time gating: {gate * 1e3:.3f} ms per draft step")
  call = float(np.median(call_samples))
  log(f"  per call of a decode loop: {call * 1e3:.3f} ms beyond its steps")
  head = float(np.median(head_samples)) if head_samples else 0.0
  return dataclasses.replace(profile, read_gbps=gbps, draft_gate_s=gate, call_s=call,
                             draft_head_s=head)


def attention_knots(step_samples) -> tuple[float, float, tuple] | None:
  """(c0, m, knots): the fixed and MLP costs fitted jointly with one attention sublayer's cost
  at each attention length the samples timed (non-negative least squares), knots being
  ((n, seconds), ...); None when fewer than two lengths were timed."""
  from scipy.optimize import nnls
  if not step_samples:
    return None
  a, m_, n, t = np.asarray(step_samples, np.float64).T
  lengths = sorted(set(n.tolist()))
  if len(lengths) < 2:
    return None
  design = np.stack([np.ones_like(a)] + [a * (n == x) for x in lengths] + [m_], axis=1)
  coef = nnls(design, t)[0]
  knots = tuple((float(x), float(y)) for x, y in zip(lengths, coef[1:-1]))
  return float(coef[0]), float(coef[-1]), knots


def fit(step_samples, verify_samples, device, model_name, dtype, n_layers, search_samples=(),
        segment_compile_s=0.0) -> LatencyProfile:
  """Non-negative least squares for (c0, a0, a1, m), then for (v0, v1) on the verify excess over
  one step, and a line through the search times. Costs are physical: no coefficient may be
  negative (plain least squares on noisy timings can make t_attn negative at short context)."""
  from scipy.optimize import nnls
  s = np.asarray(step_samples, np.float64)
  a, m_, n, t = s.T
  design = np.stack([np.ones_like(a), a, a * n, m_], axis=1)
  c0, a0, a1, mm = nnls(design, t)[0]
  knots = ()
  per_length = attention_knots(step_samples)
  if per_length is not None:  # the knots replace the line (a0, a1 are kept for the record)
    c0, mm, knots = per_length
  partial = LatencyProfile(device, model_name, dtype, n_layers, c0, a0, a1, mm, 0.0, 0.0,
                           attn_knots=knots)
  v = np.asarray([(w, ln, tv) for w, ln, tv in verify_samples if w > 1], np.float64)
  v0 = v1 = 0.0
  if len(v):
    w, ln, tv = v.T
    excess = tv - np.asarray([partial.t_step(None, x) for x in ln])
    design = np.stack([w - 1, (w - 1) * ln], axis=1)
    v0, v1 = nnls(design, np.maximum(excess, 0.0))[0]
  s0 = s1 = 0.0
  if len(search_samples) >= 2:
    sn, st = np.asarray(search_samples, np.float64).T
    s1, s0 = np.polyfit(sn, st, 1)
  elif search_samples:
    s0 = float(search_samples[0][1])
  as_tuples = lambda xs: tuple(tuple(map(float, x)) for x in xs)
  return LatencyProfile(device, model_name, dtype, n_layers, float(c0), float(a0), float(a1),
                        float(mm), float(v0), float(v1), float(s0), float(s1),
                        float(segment_compile_s), as_tuples(step_samples),
                        as_tuples(verify_samples), as_tuples(search_samples), attn_knots=knots)


def merged(profiles) -> LatencyProfile:
  """One profile fitted to the samples of several measurements of the same model on the same
  device (e.g. one attention length per process, where one process cannot time them all); the
  read bandwidth, the call, gate and draft-head costs and the segment compile, their medians.
  ValueError when the profiles are of different devices, models, dtypes or depths."""
  profiles = list(profiles)
  first = profiles[0]
  if len(profiles) == 1:
    return first
  for p in profiles[1:]:
    mine, theirs = ((x.device, x.model, x.dtype, x.n_layers) for x in (first, p))
    if mine != theirs:
      raise ValueError(f"cannot merge profiles of {theirs} into those of {mine}")
  joined = lambda name: tuple(s for p in profiles for s in getattr(p, name))
  median = lambda name: float(np.median([getattr(p, name) for p in profiles]))
  gbps = [p.read_gbps for p in profiles if p.read_gbps]
  out = fit(joined("step_samples"), joined("verify_samples"), first.device, first.model,
            first.dtype, first.n_layers, joined("search_samples"), median("segment_compile_s"))
  return dataclasses.replace(out, read_gbps=float(np.median(gbps)) if gbps else None,
                             draft_gate_s=median("draft_gate_s"), call_s=median("call_s"),
                             draft_head_s=median("draft_head_s"))


def load_or_measure(params, cfg: ModelConfig, dtype, model_name: str, directory=None,
                    compiled: CompileCache | None = None, log=print, **measure_kwargs):
  """The stored profile for this (device, model, dtype), measured and saved if there is none:
  with measure_kwargs, else on a CPU QUICK_MEASURE's (a user's first generation on a CPU without
  a stored profile waits minutes, not a quarter of an hour), else measure's defaults."""
  profile = stored(model_name, dtype, directory)
  if profile is not None:
    return profile
  if not measure_kwargs and jax.default_backend() == "cpu":
    measure_kwargs = QUICK_MEASURE
  dtype_name = str(jnp.dtype(dtype))
  log(f"measuring the latency profile of {model_name} ({dtype_name}) on {device_name()} ...")
  profile = measure(params, cfg, dtype, model_name, compiled=compiled, log=log, **measure_kwargs)
  try:
    profile.save(LatencyProfile.path_for(profile.device, model_name, dtype_name,
                                         directory or user_dir()))
  except OSError:
    pass
  return profile


def stored(model_name: str, dtype, directory=None) -> LatencyProfile | None:
  """The stored profile of this device for (model, dtype), or None: looked up in `directory`,
  then the committed profiles/ of the repository, then the user cache."""
  dtype_name = str(jnp.dtype(dtype))
  for d in ([directory] if directory else []) + [PROFILE_DIR, user_dir()]:
    path = LatencyProfile.path_for(device_name(), model_name, dtype_name, d)
    if path.is_file():
      return LatencyProfile.load(path)
  return None


def user_dir() -> pathlib.Path:
  """Where measured profiles are saved: the user cache (checkpoint.cache_dir), not the
  repository's committed profiles/."""
  from knapspec_jax.checkpoint import cache_dir
  return cache_dir() / "profiles"
