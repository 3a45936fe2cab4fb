"""A verify window against a one-token step, with the Pallas kernel and with XLA (issue 14 item 2).

  python experiments/gpu/verify_kernel.py           # H200: Qwen2.5-1.5B and Llama-3.1-8B shapes
  python experiments/gpu/verify_kernel.py --smoke   # CPU: the tiny shape, checks the script runs

decode_attention.py attends verify windows of up to 16 queries too (window_attention="pallas"),
reading each key block once for all of them, so that a verify forward should cost about one step
(issue 14); this script's H200 numbers made it the windows' default where one-token steps use
the kernel (api.default_window_attention, BENCHMARKS.md 10.13). For each
shape (random bfloat16 weights, two-row projections: shapes.random_model, the H200's defaults)
and attention bucket (1K and 16K; every forward at the cursor max(windows) positions short of
the bucket, so the longest window ends at its last position), this times on device
(latency.verify_loop: `steps` forwards of a T-token window and its greedy argmax in one loop;
an untimed call first, then the median of `repeats` loops):
  pallas T=1        the one-token step (attention="pallas", the kernel's one-query case)
  pallas T=4,8,11   verify windows through the kernel (window_attention="pallas")
  xla T=4,8,11      the same windows with XLA's masked einsum attention over the bucket
                    (window_attention="xla", the default before session 9)
and prints ms per forward, each forward's ratio to the pallas step, and the kernels per loop
body; for the step also the bytes it reads (metrics.step_bytes), GB/s and the fraction of this
device's read bandwidth, measured once in this process (latency.read_bandwidth; issue 14's
"AR >= 90% of measured read bandwidth" at 8B shape). Before its timings, each shape reports at
the first bucket whether AR and verify "round alike" in the model's dtype (issue 14): the
kernel alone (a window of max(windows) random queries over layer 0's cache against one-query
calls at the same positions: identical bits?)
and the model (AR's one-token forwards against one verify forward of the same tokens from the
same cache: identical logits at every position? the same argmax?). Runs within a budget
(--budget_s); a program that fails is recorded with its error and the rest go on; the records
are written after each one: $OUT/verify_kernel.json (or --output), "kind" "time" or
"round_alike".
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from shapes import random_model, write_records  # noqa: E402
from knapspec_jax import decode_attention, latency, metrics  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shape, buckets and loops (CPU check).")
_MODELS = flags.DEFINE_list("models", ["qwen2.5-1.5b", "llama3.1-8b"],
                            "Shapes (shapes.SHAPES; also qwen3-8b, issue 14's second 8B shape).")
_BUCKETS = flags.DEFINE_list("buckets", ["1024", "16384"], "Attention buckets (contexts).")
_WINDOWS = flags.DEFINE_list("windows", ["4", "8", "11"], "Verify window sizes T (<= 16).")
_STEPS = flags.DEFINE_integer("steps", 32, "Forwards per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_BUDGET = flags.DEFINE_float("budget_s", 480.0, "Skip the timings left after this many seconds.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/verify_kernel.json).")


@functools.partial(jax.jit, static_argnames=("cfg", "attn_len"))
def forward_logits(params, tokens, cache, *, cfg, attn_len):
  """float32 logits [T, V] of tokens [1, T] at the cache's cursor, and the cache after them."""
  out = model_lib.forward(params, cfg, tokens, cache, skip=SkipMask.none(cfg.n_layers),
                          attn_len=attn_len)
  return model_lib.lm_head(params, cfg, out.hidden[0]), out.cache


def bits_report(a, b) -> dict:
  """Whether two arrays are the same bits, and how far apart they are."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return dict(identical=bool(np.array_equal(a, b)),
              max_abs_diff=float(np.abs(a - b).max()))


def round_alike(m, context: int, attn_len: int, window: int) -> dict:
  """AR against verify at cursor `context` with the kernel (cfg.attention="pallas"): the kernel
  alone over layer 0's cache, and the model's logits at each of the window's positions."""
  cfg = dataclasses.replace(m.cfg, attention="pallas", window_attention="pallas")
  dtype = m.base.k[0].dtype
  q = jax.random.normal(jax.random.PRNGKey(2), (1, window, cfg.n_heads, cfg.head_dim), dtype)
  keys, values = m.base.k[0], m.base.v[0]
  kernel = functools.partial(decode_attention.decode_attention, attn_len=attn_len)
  together = kernel(q, keys, values, jnp.asarray([context + window], jnp.int32))
  alone = jnp.concatenate([kernel(q[:, t:t + 1], keys, values,
                                  jnp.asarray([context + t + 1], jnp.int32))
                           for t in range(window)], axis=1)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (1, window), 0, cfg.vocab_size, jnp.int32)
  start = m.base.rollback(context)
  verify, _ = forward_logits(m.params, tokens, start, cfg=cfg, attn_len=attn_len)
  cache, ar = start, []
  for t in range(window):
    logits, cache = forward_logits(m.params, tokens[:, t:t + 1], cache, cfg=cfg,
                                   attn_len=attn_len)
    ar.append(logits[0])
  ar = jnp.stack(ar)
  same = [bool(np.array_equal(np.asarray(ar[t]), np.asarray(verify[t]))) for t in range(window)]
  return dict(kernel=bits_report(together, alone), logits=bits_report(verify, ar),
              positions_identical=sum(same), argmax_equal=bool(
                  np.array_equal(np.asarray(ar.argmax(-1)), np.asarray(verify.argmax(-1)))))


def time_forward(m, attention: str, attn_len: int, context: int, window: int, steps: int,
                 repeats: int) -> tuple[float, int]:
  """(ms per forward, kernels per loop body) of `steps` T-token forwards at cursor `context`."""
  cfg = dataclasses.replace(m.cfg, attention="pallas", window_attention=attention)
  tokens = jnp.ones((1, window), jnp.int32)
  make_args = lambda: (m.params, jax.tree.map(jnp.copy, m.base.rollback(context)), tokens,
                       jnp.asarray(steps, jnp.int32))  # a fresh cache: the loop donates it
  fn = CompileCache().get(latency.VerifyLoopStatics(cfg, attn_len), make_args())
  jax.block_until_ready(fn(*make_args()))  # a program's first call is slower
  ms = latency.median_seconds(fn, make_args, repeats) / steps * 1e3
  return ms, sum(metrics.loop_kernels(fn.as_text()).values())


def describe(check: dict, window: int, context: int, dtype: str) -> str:
  """round_alike's result in one line."""
  kernel, logits = check["kernel"], check["logits"]
  return (f"AR vs verify T={window} at {context}, {dtype}: kernel alone "
          f"{'identical' if kernel['identical'] else 'differs'} (max abs "
          f"{kernel['max_abs_diff']:.3g}); model logits identical at "
          f"{check['positions_identical']} / {window} positions (max abs "
          f"{logits['max_abs_diff']:.3g}), argmax "
          f"{'equal' if check['argmax_equal'] else 'differs'}")


def main(argv):
  del argv
  started = time.perf_counter()
  smoke = _SMOKE.value
  models = ["tiny"] if smoke else _MODELS.value
  buckets = [256, 1024] if smoke else [int(n) for n in _BUCKETS.value]
  windows = [int(t) for t in _WINDOWS.value]
  if not all(2 <= t <= decode_attention.MAX_QUERIES for t in windows):
    raise app.UsageError(f"--windows must lie in 2..{decode_attention.MAX_QUERIES}")
  steps, repeats = (2, 2) if smoke else (_STEPS.value, _REPEATS.value)
  device = latency.device_name()
  print(f"{device} | jax {jax.__version__} | {steps} forwards x {repeats} loops | budget "
        f"{_BUDGET.value:.0f} s", flush=True)
  records = []
  read_gbps = latency.read_bandwidth()
  print(f"read bandwidth: {read_gbps:.1f} GB/s (sum over a large array)", flush=True)

  def save(record):
    records.append(record)
    write_records(records, _OUTPUT.value, "verify_kernel.json")

  def spent(what: str) -> bool:
    if time.perf_counter() - started <= _BUDGET.value:
      return False
    print(f"budget of {_BUDGET.value:.0f} s spent: skipping {what}", flush=True)
    return True

  for name in models:
    if spent(name):
      continue
    m = random_model(name, max(buckets), smoke)  # every cache position holds a random entry
    kv_dtype = m.base.k[0].dtype
    dtype = str(kv_dtype)
    common = dict(model=m.name, device=device, dtype=dtype)
    # bucket -> cursor: the longest window's queries reach the bucket's last positions
    contexts = {attn_bucket(n, m.capacity): attn_bucket(n, m.capacity) - max(windows)
                for n in buckets}
    print(f"== {m.name} ({dtype}, {m.cfg.n_layers} layers, {m.cfg.n_heads} / "
          f"{m.cfg.n_kv_heads} heads): buckets {list(contexts)}, ready after "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    attn_len, context = next(iter(contexts.items()))
    where = dict(context=context, attn_len=attn_len, window=max(windows))
    try:
      check = round_alike(m, context, attn_len, max(windows))
      save(dict(kind="round_alike", **common, **where, **check))
      print(describe(check, max(windows), context, dtype), flush=True)
    except Exception as e:  # noqa: BLE001  (report it and go on with the timings)
      save(dict(kind="round_alike", **common, **where, error=f"{type(e).__name__}: {e}"[:1000]))
      print(f"AR vs verify FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(f"{'bucket':>6s} {'context':>7s} {'attention':9s} {'T':>2s} {'ms/forward':>10s} "
          f"{'/step':>6s} {'kernels':>7s}", flush=True)
    for attn_len, context in contexts.items():
      step_ms = None
      for attention, window in [("pallas", 1)] + [(a, t) for a in ("pallas", "xla")
                                                  for t in windows]:
        if spent(f"{m.name} {attn_len} {attention} T={window}"):
          continue
        where = dict(attn_len=attn_len, context=context, attention=attention, window=window)
        try:
          ms, kernels = time_forward(m, attention, attn_len, context, window, steps, repeats)
        except Exception as e:  # noqa: BLE001  (report it and go on with the next program)
          save(dict(kind="time", **common, **where, error=f"{type(e).__name__}: {e}"[:1000]))
          print(f"{attn_len:6d} {context:7d} {attention:9s} {window:2d} FAILED: "
                f"{type(e).__name__}: {str(e)[:300]}", flush=True)
          continue
        reads = {}
        if window == 1:
          step_ms = ms
          reads = metrics.bandwidth(metrics.step_bytes(m.params, m.cfg, context, kv_dtype),
                                    ms / 1e3, read_gbps)
        over = None if step_ms is None else ms / step_ms
        save(dict(kind="time", **common, **where, ms_per_forward=ms, over_step=over,
                  kernels_per_body=kernels, steps=steps, repeats=repeats, **reads))
        print(f"{attn_len:6d} {context:7d} {attention:9s} {window:2d} {ms:10.3f} "
              f"{'' if over is None else f'{over:6.2f}':>6s} {kernels:7d}"
              f"{'  ' + metrics.format_bandwidth(reads) if reads else ''}", flush=True)
    del m
    gc.collect()
  out = write_records(records, _OUTPUT.value, "verify_kernel.json")
  print(f"wrote {out} ({len(records)} records) after {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
  app.run(main)
