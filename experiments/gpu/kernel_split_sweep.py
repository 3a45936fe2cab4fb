"""The split-KV attention kernel alone, over its split size, warps and pipelining stages (issue 14
items 1-2).

  python experiments/gpu/kernel_split_sweep.py          # H200: Qwen2.5-1.5B and Llama-3.1-8B heads
  python experiments/gpu/kernel_split_sweep.py --smoke  # CPU interpreter: checks the script runs
  python experiments/gpu/kernel_split_sweep.py --models=qwen3-8b,llama3.1-8b --buckets=16384 \
      --windows=1,11 --splits=512,1024 --warps= --stages=1,3,4   # the 8B verify of 11 at 16K

decode_attention.py cuts the attention bucket into splits of `split` positions (256 since
session 3) and launches one program per (split, KV head, sequence); each program writes float32
partials of its [rows, hd] tile that an XLA reduction merges. At 16K positions an 8B-shape layer
(8 KV heads) launches 512 programs, and a verify window of 11 queries (44 rows, a 64-row tile)
writes and reads back 16.8 MB of partials per layer: about a third of the 0.85 ms that a verify
forward costs over a step there (BENCHMARKS.md 10.13). Larger splits write fewer partials but
launch fewer programs. This times, for each shape's heads (random bfloat16 queries and cache,
the whole bucket valid), bucket, window T, split and warps, a loop of `calls` kernel calls (each
call's queries are the previous call's output, so that none is skipped; the merge included),
and prints microseconds per call, the cache bytes per call over that time (GB/s) and the
partial bytes; per shape and bucket the best split for each T. First it checks, on this device,
that a split that does not divide the cache (the last one reaching past it) gives what splits
of 256 give. Records -> $OUT/kernel_split.json (or --output), "kind" "check" or "time".
"""

from __future__ import annotations

import functools
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shapes import SHAPES, write_records  # noqa: E402
from knapspec_jax import decode_attention, latency  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny heads, buckets and loops (CPU interpreter).")
_MODELS = flags.DEFINE_list("models", ["qwen2.5-1.5b", "llama3.1-8b"], "Shapes (shapes.SHAPES).")
_BUCKETS = flags.DEFINE_list("buckets", ["1024", "16384", "28672"], "Attention buckets.")
_WINDOWS = flags.DEFINE_list("windows", ["1", "4", "11"], "Query positions T per call.")
_SPLITS = flags.DEFINE_list("splits", ["256", "512", "1024", "2048"], "Split sizes.")
_WARPS = flags.DEFINE_list("warps", ["4", "8"], "Warps tried beside the default at the largest T "
                           "(the first two splits).")
_STAGES = flags.DEFINE_list("stages", [], "Pipelining stages tried beside decode_attention.STAGES "
                            "at the largest T (every split, default warps).")
_CALLS = flags.DEFINE_integer("calls", 64, "Kernel calls per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_BUDGET = flags.DEFINE_float("budget_s", 300.0, "Skip the timings left after this many seconds.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/kernel_split.json).")


@functools.partial(jax.jit, static_argnames=("attn_len", "split", "warps", "stages", "calls"))
def attention_loop(q, keys, values, kv_len, *, attn_len, split, warps, stages, calls):
  """`calls` kernel calls in one program, each on the previous call's output."""
  def body(_, q):
    return decode_attention.decode_attention(q, keys, values, kv_len, attn_len=attn_len,
                                             split=split, warps=warps, stages=stages)
  return jax.lax.fori_loop(0, calls, body, q)


def partial_bytes(b: int, kv: int, splits: int, rows: int, hd: int) -> int:
  """float32 partials (output, max, normalizer) written by the programs and read by the merge."""
  return 2 * 4 * b * kv * splits * rows * (hd + 2)


def ragged_split_check(dtype) -> dict:
  """A 1280-position cache in splits of 1024 (the second reaches 768 positions past the cache)
  against splits of 256, 11 queries of 12 heads over 2 KV heads, the whole cache valid."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
  q = jax.random.normal(k1, (1, 11, 12, 128), jnp.float32).astype(dtype)
  keys, values = (jax.random.normal(k, (1, 1280, 2, 128), jnp.float32).astype(dtype)
                  for k in (k2, k3))
  kv_len = jnp.asarray([1280], jnp.int32)
  ragged, even = (decode_attention.decode_attention(q, keys, values, kv_len, split=s)
                  for s in (1024, 256))
  diff = float(jnp.abs(ragged.astype(jnp.float32) - even.astype(jnp.float32)).max())
  return dict(kind="check", what="split 1024 over a 1280-position cache vs splits of 256",
              max_abs_diff=diff, finite=bool(jnp.isfinite(ragged.astype(jnp.float32)).all()))


def main(argv):
  del argv
  started = time.perf_counter()
  smoke = _SMOKE.value
  models = ["tiny"] if smoke else _MODELS.value
  buckets = [1024] if smoke else [int(n) for n in _BUCKETS.value]
  windows = [int(t) for t in _WINDOWS.value]
  splits = [int(s) for s in _SPLITS.value]
  calls, repeats = (2, 2) if smoke else (_CALLS.value, _REPEATS.value)
  dtype = jnp.float32 if smoke else jnp.bfloat16
  device = latency.device_name()
  print(f"{device} | jax {jax.__version__} | {calls} calls x {repeats} loops", flush=True)
  records = [ragged_split_check(dtype)]
  print(f"ragged split check: max abs diff {records[0]['max_abs_diff']:.3g}, finite "
        f"{records[0]['finite']}", flush=True)
  for name in models:
    cfg = SHAPES[name]
    kv, groups, hd = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads, cfg.head_dim
    for attn_len in buckets:
      key = jax.random.PRNGKey(attn_len)
      cache = [jax.random.normal(k, (1, attn_len, kv, hd), jnp.float32).astype(dtype)
               for k in jax.random.split(key, 2)]
      cache_bytes = 2 * attn_len * kv * hd * jnp.dtype(dtype).itemsize
      best = {}
      for t in windows:
        rows = decode_attention.tile_rows(t, groups)
        q = jax.random.normal(key, (1, t, cfg.n_heads, hd), jnp.float32).astype(dtype)
        default_warps, default_stages = decode_attention.num_warps(rows), decode_attention.STAGES
        tries = [(s, None, default_stages) for s in splits
                 if s <= max(attn_len, decode_attention.SPLIT)]
        if t == max(windows):
          tries += [(s, w, default_stages) for s in splits[:2] for w in map(int, _WARPS.value)
                    if w != default_warps and s <= attn_len]
          tries += [(s, None, st) for s in splits for st in map(int, _STAGES.value)
                    if st != default_stages and s <= max(attn_len, decode_attention.SPLIT)]
        for split, warps, stages in tries:
          if time.perf_counter() - started > _BUDGET.value:
            print(f"budget spent: skipping {name} {attn_len} T={t} split {split}", flush=True)
            continue
          n = decode_attention.n_splits(attn_len, split)
          run = functools.partial(attention_loop, attn_len=attn_len, split=split, warps=warps,
                                  stages=stages, calls=calls)
          args = lambda: (q, cache[0], cache[1], jnp.asarray([attn_len], jnp.int32))
          jax.block_until_ready(run(*args()))  # compile and a first call
          us = latency.median_seconds(run, args, repeats) / calls * 1e6
          record = dict(kind="time", model=name, device=device, dtype=str(jnp.dtype(dtype)),
                        attn_len=attn_len, window=t, rows=rows, split=split, splits=n, programs=n * kv,
                        warps=warps or default_warps, stages=stages, us_per_call=us,
                        cache_mb=cache_bytes / 1e6,
                        partial_mb=partial_bytes(1, kv, n, rows, hd) / 1e6,
                        cache_gbps=cache_bytes / us / 1e3, calls=calls, repeats=repeats)
          records.append(record)
          write_records(records, _OUTPUT.value, "kernel_split.json")
          if record["us_per_call"] < best.get(t, (float("inf"),))[0]:
            best[t] = (us, split, record["warps"], stages)
          print(f"{name:13s} {attn_len:6d} T={t:2d} rows {rows:3d} split {split:5d} "
                f"({n:4d} x {kv} programs) warps {record['warps']} stages {stages} "
                f"{us:9.2f} us/call "
                f"{record['cache_gbps']:7.1f} GB/s cache, {record['partial_mb']:6.2f} MB partials",
                flush=True)
      for t, (us, split, warps, stages) in best.items():
        print(f"best {name} {attn_len} T={t}: split {split}, warps {warps}, stages {stages}, "
              f"{us:.2f} us/call", flush=True)
  out = write_records(records, _OUTPUT.value, "kernel_split.json")
  print(f"wrote {out} ({len(records)} records) after {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
  app.run(main)
