"""One-query decode kernels on the GPU: ms/token, GB/s and kernels per step (issue 14, part 4).

  python experiments/gpu/decode_kernels.py                 # H200: SmolLM2 and Qwen2.5-1.5B shapes
  python experiments/gpu/decode_kernels.py --smoke         # CPU: tiny shapes, checks it runs

For each model shape (random bf16 weights, model.init_random_params) and context, times an
on-device loop of one-token steps (forward, LM head, argmax fed back; the cache cursor stays at
the context) with each one-query attention variant:
  xla           the project's XLA attention over the cache sliced to the bucket;
  pallas        the split-KV Pallas kernel (Triton backend) over the bucket (decode_attention);
  pallas_whole  the same kernel over the whole cache, as before the grid followed the bucket;
  cudnn         jax.nn.dot_product_attention's cuDNN kernel (opt in: --variants=...,cudnn);
  <any>_rows2   that variant with its projections padded to two rows (ModelConfig.matmul_rows);
and a T-token verify forward (--verify; multi-token forwards always use XLA attention), with
its ratio to the one-token step of xla (/xla) and of pallas (/pal). The cache holds the bucket's
last positions (bucket - max T): within a bucket, the costliest steps. Each line prints
ms/token, tokens/s, the bytes a step reads (weights and the KV cache up to the context), GB/s,
the fraction of the device's read bandwidth (latency.read_bandwidth) and the kernels per step
(kernel-launching instructions of the compiled loop's body). Records go to
$OUT/decode_kernels.json (or --output). Run it twice: the second process reads every program
from the persistent compilation cache (compile_cache.py); its compile_s shows it.

No Mosaic GPU variant yet: lowering this kernel's body with Mosaic GPU's CompilerParams (checked
on a CPU host through jax.export for CUDA, jax 0.10.2) stops at 4-byte blocks (kv_len; copies
must move a multiple of 128 bytes) and then at the transposed dot ("Unimplemented primitive ...
transpose for lowering semantics Lane"): a Mosaic GPU kernel is a rewrite (plgpu.kernel, wgmma
on 64-row tiles in SMEM), not a backend switch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from knapspec_jax import decode_attention, latency, metrics  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from shapes import SHAPES  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and loops (CPU check of the script).")
_MODELS = flags.DEFINE_list("models", ["smollm2", "qwen2.5-1.5b"], "Model shapes.")
_LENS = flags.DEFINE_list("attn_lens", ["256", "2048", "16384"], "Attention buckets (capped "
                          "at a model's context); the cache holds bucket - max(verify) positions.")
_VARIANTS = flags.DEFINE_list("variants", ["xla", "pallas", "pallas_whole"], "Kernels.")
_VERIFY = flags.DEFINE_list("verify", ["4"], "Verify window sizes T to time.")
_STEPS = flags.DEFINE_integer("steps", 64, "Steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_BUDGET = flags.DEFINE_float("budget_s", 200.0, "Skip what is left after this many seconds.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/decode_kernels.json).")


_bucketed_kernel = decode_attention.decode_attention


def _whole_cache_kernel(q, keys, values, kv_len, *, attn_len=None, **kwargs):
  """The kernel as it was before its grid followed the bucket: every split of the cache."""
  del attn_len
  return _bucketed_kernel(q, keys, values, kv_len, **kwargs)


def ratio(x: float | None) -> str:
  return "" if x is None else f"{x:.2f}"


def time_loop(compiled, params, base, tokens, steps: int, repeats: int) -> float:
  """Median seconds per forward over `repeats` loops of `steps` (a fresh cache copy each)."""
  n_iter = jnp.asarray(steps, jnp.int32)
  times = []
  for _ in range(repeats):
    cache = jax.tree.map(jnp.copy, base)
    jax.block_until_ready(cache)
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, cache, tokens, n_iter))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) / steps


def main(argv):
  del argv
  started = time.perf_counter()
  smoke = _SMOKE.value
  models = ["tiny"] if smoke else _MODELS.value
  lens = [256, 1024] if smoke else [int(n) for n in _LENS.value]
  t_max = max(map(int, _VERIFY.value))
  steps, repeats = (4, 2) if smoke else (_STEPS.value, _REPEATS.value)
  dtype = jnp.float32 if smoke else jnp.bfloat16
  read_gbps = latency.read_bandwidth(64 << 20 if smoke else None)
  device = latency.device_name()
  print(f"{device} | jax {jax.__version__} | read bandwidth {read_gbps:.1f} GB/s | "
        f"{np.dtype(dtype).name} | {steps} steps x {repeats} loops", flush=True)
  out_path = pathlib.Path(_OUTPUT.value or pathlib.Path(os.environ.get("OUT", ".")) /
                          "decode_kernels.json")
  records = []

  def save():
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(dict(device=device, jax=jax.__version__, read_gbps=read_gbps,
                                        records=records), indent=1))

  header = (f"{'model':13s} {'context':>7s} {'bucket':>6s} {'variant':12s} {'T':>2s} "
            f"{'ms/token':>8s} {'tok/s':>7s} {'/xla':>5s} {'/pal':>5s} {'GB/step':>7s} "
            f"{'GB/s':>7s} "
            f"{'%bw':>4s} {'kernels':>7s}  kinds")
  print(header, flush=True)
  for name in models:
    base_cfg = SHAPES[name]
    params = model_lib.init_random_params(base_cfg, jax.random.PRNGKey(0), dtype)
    for n in lens:
      attn_len = attn_bucket(min(n, base_cfg.max_seq_len), KVCache.capacity_for(base_cfg))
      context = attn_len - t_max  # the last positions of the bucket: its costliest steps
      base = latency.random_cache(base_cfg, dtype, context, jax.random.PRNGKey(1))
      step_bytes = metrics.step_bytes(params, base_cfg, context, dtype)
      one_step = {}
      runs = [(v, 1) for v in _VARIANTS.value] + [("xla", int(t)) for t in _VERIFY.value]
      for variant, window in runs:
        if time.perf_counter() - started > _BUDGET.value:
          print(f"{name:13s} {context:7d} budget of {_BUDGET.value:.0f} s spent: skipping "
                f"{variant} T={window}", flush=True)
          continue
        attention = "pallas" if variant.startswith("pallas") else variant.split("_")[0]
        rows = 2 if variant.endswith("_rows2") else 1  # projections padded to 2 rows
        cfg = dataclasses.replace(base_cfg, attention=attention, matmul_rows=rows)
        decode_attention.decode_attention = (_whole_cache_kernel if variant == "pallas_whole"
                                             else _bucketed_kernel)
        try:
          cache_fns = CompileCache()
          tokens = jnp.ones((1, window), jnp.int32)
          args = (params, base, tokens, jnp.asarray(steps, jnp.int32))
          fn = cache_fns.get(latency.VerifyLoopStatics(cfg, attn_len), args)
          seconds = time_loop(fn, params, base, tokens, steps, repeats)
          kernels = metrics.loop_kernels(fn.as_text())
        except Exception as e:  # noqa: BLE001  (report it and go on with the next variant)
          print(f"{name:13s} {context:7d} {variant} T={window} FAILED: {type(e).__name__}: "
                f"{str(e)[:300]}", flush=True)
          records.append(dict(model=name, context=context, variant=variant, window=window,
                              error=f"{type(e).__name__}: {str(e)[:1000]}"))
          save()
          continue
        finally:
          decode_attention.decode_attention = _bucketed_kernel
        if window == 1:
          one_step[variant] = seconds
        over = lambda v: seconds / one_step[v] if window > 1 and v in one_step else None
        bw = metrics.bandwidth(step_bytes, seconds, read_gbps)
        record = dict(model=name, context=context, attn_len=attn_len, variant=variant,
                      window=window, ms_per_forward=seconds * 1e3,
                      tokens_per_s=1 / seconds, verify_over_xla_step=over("xla"),
                      verify_over_pallas_step=over("pallas"),
                      kernels_per_step=sum(kernels.values()), kernel_kinds=kernels,
                      compile_s=cache_fns.stats.compile_s, **bw)
        records.append(record)
        save()
        print(f"{name:13s} {context:7d} {attn_len:6d} {variant:12s} {window:2d} "
              f"{seconds * 1e3:8.3f} {1 / seconds:7.1f} "
              f"{ratio(over('xla')):>5s} {ratio(over('pallas')):>5s} {bw['step_gb']:7.3f} "
              f"{bw['gb_per_s']:7.1f} {100 * bw['bandwidth_fraction']:4.0f} "
              f"{sum(kernels.values()):7d}  {kernels} (compile {cache_fns.stats.compile_s:.1f} s)",
              flush=True)
      del base
  print(f"wrote {out_path} ({len(records)} records, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  app.run(main)
