"""Tensor-parallel decoding of 70B-class shapes (issue 17): latency profiles, ms per token and
bandwidth per device, and what a step exchanges, against tp.

  # a machine of several H200s (nvidia-h200-x8: tp 2, 4 and 8 in one process)
  python experiments/gpu/tp_scaling.py --shapes=llama3.1-70b --tps=8 \
      --attn_lens=1024,16384,65536
  # anywhere, from its profiles: the KnapSpec projection at 70B (labelled PROJECTION)
  python experiments/project_scale.py --profiles_dir=results/<machine>/tp_scaling/tp8/profiles \
      --acceptance_fit=results/cpu/analysis/acceptance_qwen/fit.json --contexts=1024,16384,65536
  # CPU: 8 virtual devices, the tiny shape at tp 2 and 4 (checks the script runs)
  python experiments/gpu/tp_scaling.py --smoke

For each shape and tp (a mesh of the first tp devices; random weights in bfloat16 drawn straight
into their shards, model.init_random_params, so a 70B shape builds on devices that cannot hold it
whole; the engine's kernel defaults, shapes.engine_config):
- what a new skip set costs: the speculation segment (gamma --gamma) of each --sets skip set at
  the first attention length, compiled (seconds; a rerun on the same machine reads JAX's
  persistent cache, so the first run's are the compiles);
- the latency profile (latency.measure: one-token steps with the profile's four skip masks,
  verifies of --windows tokens, the knapsack search), saved as
  tp<N>/profiles/<shape>.json beside the records, the layout project_scale.py --profiles_dir reads;
- per attention length: AR's ms per token (the profile's full-model sample, measured, not the
  fit), the bytes one device reads per step (metrics.step_bytes, per device), its GB/s and share
  of one device's measured read bandwidth, and the collectives in AR's compiled loop body with
  the bytes they return per step (metrics.loop_collectives).
Records: $OUT/tp_scaling/tp_scaling.json (or --output), rewritten after each (shape, tp), so a
call that runs out of time keeps what it finished; beside it the profiles (tp<N>/profiles/) and
the tables (summary.md).
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import shapes  # noqa: E402
from knapspec_jax import decoding, latency, metrics, sharding, speculative  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.config import UnsupportedModelError  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "8 virtual CPU devices, the tiny shape, tp 2 and 4, "
                           "short loops (a CPU check of the script).")
_SHAPES = flags.DEFINE_list("shapes", ["llama3.1-70b"], "Shapes (shapes.SHAPES): llama3.1-70b, "
                            "qwen2.5-72b, qwen3-32b, ...")
_TPS = flags.DEFINE_list("tps", [], "Tensor-parallel sizes (default: the device count).")
_ATTN_LENS = flags.DEFINE_list("attn_lens", ["1024", "16384", "65536"], "Attention lengths.")
_WINDOWS = flags.DEFINE_list("windows", ["1", "4", "8", "11"], "Verify windows (tokens).")
_SETS = flags.DEFINE_list("sets", ["20:10", "40:20"], "Skip sets whose segment compile is "
                          "timed, as attn:mlp counts of inner sublayers spread evenly.")
_GAMMA = flags.DEFINE_integer("gamma", 4, "Draft length of the timed segment compiles.")
_STEPS = flags.DEFINE_integer("steps", 16, "Decode steps per timed loop (and 4x as many).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed loops per sample (median).")
_OUTPUT = flags.DEFINE_string("output", None, "The records' JSON path (default: "
                               "$OUT/tp_scaling/tp_scaling.json); profiles and summary.md go "
                               "beside it.")


def tp_sizes(cfg, n_devices: int) -> list[int]:
  """--tps, else the device count; a size the devices or the shape cannot split is refused with
  sharding's message."""
  tps = [int(t) for t in _TPS.value] or [n_devices]
  for tp in tps:
    sharding.make_mesh(tp, cfg)  # raises UnsupportedModelError naming what does not divide
  return tps


def zero_state(cfg, mesh, dtype, max_new: int) -> decoding.DecodeState:
  """A decode state over a zeroed cache placed as the model's (split by KV heads where tp
  divides them): the arguments a program is compiled for."""
  cache = KVCache.create(cfg, dtype, sharding=sharding.cache_sharding(cfg, mesh))
  return decoding.init_state(cache, jnp.zeros((cfg.vocab_size,), jnp.float32), max_new, ())


def segment_compiles(cfg, params, mesh, dtype, attn_len: int, sets: list[str],
                     compiled: CompileCache) -> list[dict]:
  """Seconds to compile the speculation segment of each skip set ("attn:mlp" counts of inner
  sublayers, spread evenly): what a switch to a new skip set costs at this size."""
  out = []
  for spec in sets:
    n_attn, n_mlp = (int(x) for x in spec.split(":"))
    skip = SkipMask.from_layers(cfg.n_layers, attn=shapes.spread(cfg.n_layers, n_attn),
                                mlp=shapes.spread(cfg.n_layers, n_mlp))
    args = (params, zero_state(cfg, mesh, dtype, 8), speculative.SpecCounters.zeros(),
            jnp.ones((), jnp.int32), jnp.zeros((), jnp.float32))
    before = compiled.stats.compile_s
    compiled.get(speculative.segment_program(cfg, skip, _GAMMA.value, attn_len), args)
    out.append(dict(n_attn_skipped=len(skip.attn_skipped), n_mlp_skipped=len(skip.mlp_skipped),
                    gamma=_GAMMA.value, attn_len=attn_len,
                    compile_s=compiled.stats.compile_s - before))
  return out


def ar_collectives(cfg, params, mesh, dtype, attn_len: int, compiled: CompileCache) -> dict:
  """The collectives of AR's loop body at attn_len (the profile compiled it: a cache hit)."""
  fn = compiled.get(decoding.ARSegmentStatics(cfg, attn_len),
                    (params, zero_state(cfg, mesh, dtype, 1)))
  return metrics.loop_collectives(fn.as_text())


def rows_of(profile: latency.LatencyProfile, cfg, params, dtype, read_gbps, collectives) -> list:
  """One record per attention length: the profile's measured samples, bytes and bandwidth."""
  rows = []
  full = cfg.n_layers
  for attn_len in sorted({int(s[2]) for s in profile.step_samples}):
    steps = {(int(a), int(m)): t for a, m, n, t in profile.step_samples if int(n) == attn_len}
    ar_s = steps[(full, full)]
    verify = {int(w): t for w, n, t in profile.verify_samples if int(n) == attn_len}
    search = [t for n, t in profile.search_samples if int(n) == attn_len]
    step_bytes = metrics.step_bytes(params, cfg, attn_len, dtype, per_device=True)
    bw = metrics.bandwidth(step_bytes, ar_s, read_gbps)
    rows.append(dict(
        attn_len=attn_len, ar_ms=1e3 * ar_s,
        draft_ms={f"{full - a} attn + {full - m} mlp skipped": 1e3 * t
                  for (a, m), t in sorted(steps.items(), reverse=True) if (a, m) != (full, full)},
        verify_over_step={w: t / ar_s for w, t in sorted(verify.items())},
        search_ms=1e3 * search[0] if search else None,
        device_step_gb=bw["step_gb"], device_gb_per_s=bw["gb_per_s"],
        device_read_gbps=read_gbps, bandwidth_fraction=bw["bandwidth_fraction"],
        collectives=collectives[attn_len]))
  return rows


def summary(records: list[dict]) -> str:
  lines = ["| shape | tp | context | AR ms/token | GB read per device per step | GB/s per device "
           "| of read bandwidth | collectives per step (count, MB) | verify 4 / 8 / 11 over a "
           "step | search ms |", "|---|---|---|---|---|---|---|---|---|---|"]
  ordered = sorted(records, key=lambda r: (r["shape"], r["attn_len"], r["tp"]))
  for r in ordered:
    coll = ", ".join(f"{k} {v['count']} x, {v['bytes'] / 1e6:.3f} MB"
                     for k, v in sorted(r["collectives"].items())) or "none"
    ver = " / ".join(f"{r['verify_over_step'][w]:.3f}" if w in r["verify_over_step"] else "-"
                     for w in (4, 8, 11))
    frac = "-" if r["bandwidth_fraction"] is None else f"{100 * r['bandwidth_fraction']:.0f}%"
    search = "-" if r["search_ms"] is None else f"{r['search_ms']:.1f}"
    lines.append(f"| {r['shape']} | {r['tp']} | {r['attn_len']} | {r['ar_ms']:.3f} | "
                 f"{r['device_step_gb']:.2f} | {r['device_gb_per_s']:.0f} | {frac} | {coll} | "
                 f"{ver} | {search} |")
  compiles = [(r["shape"], r["tp"], c) for r in ordered if r["attn_len"] == r["first_attn_len"]
              for c in r["segment_compiles"]]
  lines += ["", "| shape | tp | skip set (attn + MLP, gamma) | attention length | segment "
            "compile s |", "|---|---|---|---|---|"]
  lines += [f"| {s} | {tp} | {c['n_attn_skipped']} + {c['n_mlp_skipped']}, {c['gamma']} | "
            f"{c['attn_len']} | {c['compile_s']:.1f} |" for s, tp, c in compiles]
  return "\n".join(lines)


def main(argv):
  del argv
  smoke = _SMOKE.value
  if smoke:
    jax.config.update("jax_num_cpu_devices", 8)  # before the backend starts
  out = pathlib.Path(_OUTPUT.value or pathlib.Path(os.environ.get("OUT", ".")) / "tp_scaling"
                     / "tp_scaling.json")
  out_dir = out.parent
  out_dir.mkdir(parents=True, exist_ok=True)
  names = ["tiny"] if smoke else _SHAPES.value
  unknown = [n for n in names if n not in shapes.SHAPES]
  if unknown:
    raise app.UsageError(f"--shapes: unknown {unknown}; known: {sorted(shapes.SHAPES)}")
  lens = [256, 512] if smoke else sorted(int(a) for a in _ATTN_LENS.value)
  windows = (1, 4) if smoke else tuple(int(w) for w in _WINDOWS.value)
  steps, repeats = (4, 1) if smoke else (_STEPS.value, _REPEATS.value)
  dtype_name = "float32" if smoke else "bfloat16"
  dtype = jnp.dtype(dtype_name)
  devices = jax.devices()
  read_gbps = latency.read_bandwidth(64 << 20 if smoke else None)  # one device's
  print(f"{latency.device_name()} x {len(devices)} | jax {jax.__version__} | read bandwidth "
        f"{read_gbps:.0f} GB/s per device", flush=True)
  records = []
  for name in names:
    # smoke: 4 layers, so that the profile's masks skip inner sublayers
    shape = dataclasses.replace(shapes.SHAPES[name], max_seq_len=max(lens),
                                **(dict(n_layers=4) if smoke else {}))
    cfg = shapes.engine_config(shape, dtype_name)
    try:
      # smoke: tp 2 splits the tiny shape's 2 KV heads, tp 4 cannot (tp 1, one device without
      # a mesh, is what every single-device script runs; 35 s of the suite, session 36)
      tps = [2, 4] if smoke else tp_sizes(cfg, len(devices))
    except UnsupportedModelError as e:
      raise app.UsageError(f"--tps: {e}") from None
    for tp in tps:
      start = time.perf_counter()
      cfg = shapes.engine_config(shape, dtype_name, tp)  # as load_model builds it for this mesh
      mesh = sharding.make_mesh(tp, cfg) if tp > 1 else None
      params = shapes.random_params(cfg, dtype, mesh)
      jax.block_until_ready(params)
      print(f"{name} tp={tp}: {metrics.step_bytes(params, cfg, 0, dtype) / 1e9:.1f} GB of "
            f"weights, {metrics.step_bytes(params, cfg, 0, dtype, per_device=True) / 1e9:.2f} "
            f"read per device per step; built in {time.perf_counter() - start:.0f} s", flush=True)
      compiled = CompileCache()
      compiles = segment_compiles(cfg, params, mesh, dtype, lens[0],
                                  ["1:1"] if smoke else _SETS.value, compiled)
      for c in compiles:
        print(f"  segment compile {c['n_attn_skipped']} + {c['n_mlp_skipped']} skipped, gamma "
              f"{c['gamma']}: {c['compile_s']:.1f} s", flush=True)
      profile = latency.measure(params, cfg, dtype, f"synthetic-{name} tp={tp} (random weights)",
                                attn_lens=tuple(lens), windows=windows, steps=steps,
                                repeats=repeats, compiled=compiled,
                                log=lambda s: print(f"  {name} tp={tp}{s}", flush=True))
      profile.save(out_dir / f"tp{tp}" / "profiles" / f"{name}.json")
      collectives = {n: ar_collectives(cfg, params, mesh, dtype, n, compiled) for n in lens}
      for row in rows_of(profile, cfg, params, dtype, read_gbps, collectives):
        records.append(dict(shape=name, tp=tp, device=latency.device_name(),
                            n_devices=len(devices), first_attn_len=lens[0],
                            segment_compiles=compiles, profile_errors=profile.errors(), **row))
      out.write_text(json.dumps(records, indent=1))
      print(f"{name} tp={tp}: done in {time.perf_counter() - start:.0f} s", flush=True)
      del params, compiled
  text = summary(records)
  (out_dir / "summary.md").write_text(text + "\n")
  print(text)
  print(f"wrote {out_dir}")


if __name__ == "__main__":
  app.run(main)
