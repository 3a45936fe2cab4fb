"""Compile time of one generation in a fresh process and in a second one (issue 14, part 5).

  python experiments/gpu/compile_twice.py --model=qwen2.5-1.5b     # H200, bf16, random weights
  python experiments/gpu/compile_twice.py --model=tiny --dtype=float32 --tokens=8   # CPU check

Runs the same AR generation (random weights of a decode_kernels.SHAPES shape, a 100-token
prompt) in two Python processes that share one cache directory ($KNAPSPEC_CACHE): JAX's
persistent compilation cache (xla/) and the executable store (executables/, compile_cache.py).
Each prints the warm-up compile_s and load_s that generate() reports (programs compiled, and
programs loaded from the store), the priming calls' share of them, and where the time went from
JAX's own events: tracing (all of it, and the project's programs' alone), lowering to MLIR, XLA
compiles (JAX times a read of its on-disk cache as one too) and, of those, the reads. The first
process starts from an empty directory, removed at the end. --store=0 measures JAX's cache alone
(KNAPSPEC_EXEC_CACHE=0), as BENCHMARKS.md 10.14 did.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]

EVENTS = {"trace": "/jax/core/compile/jaxpr_trace_duration",
          "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
          "xla_compile": "/jax/core/compile/backend_compile_duration",  # a disk read included
          "disk_read": "/jax/compilation_cache/cache_retrieval_time_sec"}


def one_process(model_name: str, dtype: str, tokens: int) -> dict:
  sys.path.insert(0, str(REPO))
  sys.path.insert(0, str(REPO / "experiments" / "gpu"))
  import jax
  import numpy as np
  totals = {k: [0, 0.0] for k in EVENTS}
  programs_traced = []  # the project's programs (compile_cache names each after its statics)

  def listen(event, seconds, fun_name=None, **_):
    for k, name in EVENTS.items():
      if event == name:
        totals[k][0] += 1
        totals[k][1] += seconds
    if event == EVENTS["trace"]:
      programs_traced.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listen)
  from decode_kernels import SHAPES
  from knapspec_jax import api, compile_cache
  from knapspec_jax import model as model_lib
  cfg = dataclasses.replace(SHAPES[model_name], attention=api.default_attention(dtype))
  params = model_lib.init_random_params(cfg, jax.random.PRNGKey(0), api.DTYPES[dtype])
  model = api.Model(cfg, params, None, (), dtype, model_name)
  before = {k: list(v) for k, v in totals.items()}
  n_traced = len(programs_traced)
  r = api.generate(model, np.arange(1, 101) % cfg.vocab_size, tokens, ignore_eos=True)
  stats = model.compiled.stats
  store = compile_cache.executable_store_dir()
  return dict(compile_s=r.compile_s, programs=stats.compiles, load_s=r.load_s,
              loaded=stats.loaded, prime_s=stats.prime_s, attention=cfg.attention,
              programs_traced=sum(name in compile_cache.PROGRAMS
                                  for name in programs_traced[n_traced:]),
              tokens_per_s=r.tokens_per_s, cache_dir=compile_cache.persistent_cache_dir(),
              store_dir=None if store is None else str(store),
              **{f"{k}_n": totals[k][0] - before[k][0] for k in EVENTS},
              **{f"{k}_s": totals[k][1] - before[k][1] for k in EVENTS})


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="qwen2.5-1.5b")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--tokens", type=int, default=32)
  parser.add_argument("--store", type=int, default=1, help="0: the executable store off")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--output", default=None, help="JSON (default: $OUT/compile_twice.json)")
  args = parser.parse_args()
  if args.child:
    print(json.dumps(one_process(args.model, args.dtype, args.tokens)))
    return
  cache = tempfile.mkdtemp(prefix="knapspec_compile_twice_")
  env = dict(os.environ, KNAPSPEC_CACHE=cache, KNAPSPEC_XLA_CACHE="1",
             KNAPSPEC_EXEC_CACHE=str(args.store))
  runs = []
  for label in ("fresh process", "second process"):
    proc = subprocess.run([sys.executable, __file__, "--child", f"--model={args.model}",
                           f"--dtype={args.dtype}", f"--tokens={args.tokens}"], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
      print(f"{label} FAILED:\n{proc.stderr[-3000:]}")
      sys.exit(1)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    runs.append(dict(process=label, **r))
    print(f"{args.model} {args.dtype} {label:15s}: compile_s {r['compile_s']:6.2f} s for "
          f"{r['programs']} programs, load_s {r['load_s']:.2f} s for {r['loaded']} (priming "
          f"{r['prime_s']:.2f} s of them) | trace {r['trace_s']:.2f} s ({r['trace_n']}, "
          f"{r['programs_traced']} of our programs), lower {r['lower_s']:.2f} s "
          f"({r['lower_n']}), compile or read {r['xla_compile_s']:.2f} s ({r['xla_compile_n']}), "
          f"of it disk reads {r['disk_read_s']:.2f} s ({r['disk_read_n']}) | {r['attention']} "
          f"attention, decode {r['tokens_per_s']:.1f} tok/s",
          flush=True)
  for sub in ("xla", "executables"):
    path = pathlib.Path(cache, sub)
    entries = list(path.iterdir()) if path.is_dir() else []
    print(f"cache {path}: {len(entries)} entries, "
          f"{sum(p.stat().st_size for p in entries) / 1e6:.1f} MB")
  out = pathlib.Path(args.output or pathlib.Path(os.environ.get("OUT", ".")) /
                     "compile_twice.json")
  out.write_text(json.dumps(runs, indent=1))
  shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
  main()
