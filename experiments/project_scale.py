"""Analysis 5: where would KnapSpec pay? Latency profiles of larger model shapes (synthetic,
random weights) combined with an acceptance curve measured on a real model (SmolLM2's by
default, Qwen2.5-Coder-1.5B's with --acceptance_fit), projected to tokens per time and speedup
against model size and context length.

  # on the GPU (experiments/gpu/run_project_scale.sh): measure the shapes' profiles, project
  python experiments/project_scale.py --shapes=llama3.2-1b,llama3.1-8b,qwen3-8b \
      --attn_lens=1024,4096,16384 --output_dir=$OUT/scale
  # anywhere: re-project from stored profiles without measuring
  python experiments/project_scale.py --profiles_dir=results/h100/scale/profiles \
      --output_dir=results/h100/scale
  # CPU smoke run: python experiments/project_scale.py --shapes=tiny --attn_lens=256,512 ...

Measured (synthetic): each shape's latency profile, with the project's own compiled programs
(latency.measure, as measure_profile.py does for the real model): per-sublayer cost against
context, verify cost against window, search time. Latency does not depend on weight values, so
random weights give the real shape's costs; nothing about acceptance is measured on them.

Projected: for each shape and context n, the best draft over attention/MLP skip counts
(first and last layer kept) and gamma = 1..10 by

  TPT = I E(alpha, g) / (I (g t_draft + t_verify(g + 1)) + t_search(n)),   speedup = TPT t_full

I = the re-optimization interval in rounds (one search per I rounds), or AR (1.0x) when no draft
beats it by KnapSpec's 3% margin, as KnapSpec declines. alpha comes from an acceptance curve,
alpha = exp(-k (b_attn f_attn + b_mlp f_mlp)), f the fractions skipped, (b_attn, b_mlp) fitted on
a real model (experiments/acceptance_curve.py), and k a scenario: k = 1, that model's curve; k
calibrated so that the Llama-3.2-1B shape's projection at the largest context equals the
paper's reported speedup for Llama3.2-1B (1.06-1.13x: 1.10x), i.e. the acceptance the paper's
result implies on this engine's latencies. Every number this script prints is either a
measured latency of a synthetic-weight model or a projection, and is labelled so.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gpu"))
import common  # noqa: E402  (puts the repository on sys.path)
import shapes as device_shapes  # noqa: E402
from knapspec_jax import latency, selection  # noqa: E402
from knapspec_jax.config import ModelConfig  # noqa: E402

# Shapes from the models' published configs (RoPE scaling left out: it changes frequencies,
# not cost). max_seq_len is set per run from the attention lengths measured. Those the GPU
# scripts time too are theirs (experiments/gpu/shapes.py), under this script's names.
SHAPES = {
    "smollm2-135m": device_shapes.SHAPES["smollm2"],
    "llama3.2-1b": ModelConfig(arch="llama", vocab_size=128256, d_model=2048, d_ff=8192,
                               n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                               rope_theta=500000.0),
    "llama3.1-8b": device_shapes.SHAPES["llama3.1-8b"],
    "qwen3-8b": device_shapes.SHAPES["qwen3-8b"],
    "qwen2.5-coder-1.5b": device_shapes.SHAPES["qwen2.5-1.5b"],
    # issue 17's tensor-parallel shapes: their profiles come from experiments/gpu/tp_scaling.py
    "qwen3-32b": device_shapes.SHAPES["qwen3-32b"],
    "llama3.1-70b": device_shapes.SHAPES["llama3.1-70b"],
    "qwen2.5-72b": device_shapes.SHAPES["qwen2.5-72b"],
    "tiny": ModelConfig(arch="llama", vocab_size=512, d_model=64, d_ff=128, n_layers=4,
                        n_heads=4, n_kv_heads=2, head_dim=16),  # CPU smoke runs only
}
# The paper's speedups a scenario calibrates k to, when the shape's profile is projected:
# shape -> (speedup, context or None for the largest projected, label, plot tag). KNAPSPEC.md:
# Llama3.2-1B 1.06-1.13x over AR; Llama3.1-70B up to 1.47x (GovReport, inputs truncated to ~16K).
PAPER_ANCHORS = {"llama3.2-1b": (1.10, None, "1B", "paper_calibrated"),
                 "llama3.1-70b": (1.47, 16384, "70B (1.47x at 16K)", "paper_70b_calibrated")}
GAMMA_MAX = 10
MARGIN = 0.03  # KnapSpecConfig.margin: a draft must beat AR by this fraction

_SHAPES = flags.DEFINE_list("shapes", ["llama3.2-1b", "llama3.1-8b", "qwen3-8b"],
                            f"Shapes to measure: {sorted(SHAPES)}.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Weights/KV dtype.")
_ATTN_LENS = flags.DEFINE_list("attn_lens", ["1024", "4096", "16384"],
                               "Attention lengths the profiles are measured at.")
_WINDOWS = flags.DEFINE_list("windows", ["1", "4", "11"], "Verify windows measured.")
_STEPS = flags.DEFINE_integer("steps", 16, "Decode steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed loops per sample (median).")
_PROFILES = flags.DEFINE_list("profiles_dir", [], "Project from the profiles stored here "
                              "(<shape>.json) instead of measuring; a shape's profiles in several "
                              "directories (e.g. one attention length per device call) are "
                              "fitted together (latency.merged).")
_FIT = flags.DEFINE_string("acceptance_fit", "results/cpu/analysis/acceptance/fit.json",
                           "An acceptance curve measured by experiments/acceptance_curve.py: "
                           "SmolLM2's (default) or Qwen2.5-Coder-1.5B's "
                           "(results/cpu/analysis/acceptance_qwen/fit.json).")
_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "2048", "4096", "8192", "16384"],
                              "Contexts the projection is made at.")
_INTERVAL = flags.DEFINE_integer("interval", 64, "Speculation rounds per search (official 64).")
_ADD = flags.DEFINE_list("add_profiles", [], "Measured profiles of real models to project too, "
                         "as shape=path.json (e.g. the committed H100 SmolLM2 profile).")
_OUT = flags.DEFINE_string("output_dir", None, "profiles/, projection.jsonl, summary.md, plots.")
_VERIFY_SCALE = flags.DEFINE_float("verify_scale", 1.0, "What-if: scale every profile's verify "
                                   "excess over one step (LatencyProfile.scaled(verify=...)); "
                                   "0 = a verify window costs one step. 1: as measured.")


def shape_config(name: str, max_len: int) -> ModelConfig:
  return dataclasses.replace(SHAPES[name], max_seq_len=max_len)


def curve_of(fit: dict) -> str:
  """The model an acceptance fit was measured on, short: "SmolLM2-135M-Instruct (float32)" ->
  "SmolLM2-135M-Instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (float32)" ->
  "qwen2.5-coder-1.5b-instruct"."""
  name = fit.get("model", "unnamed").split(" ")[0]
  return name.split("-q4_k_m")[0].removesuffix(".gguf")


def n_params(cfg: ModelConfig) -> float:
  """Parameters of the shape (embedding and LM head counted once each when untied)."""
  attn = cfg.d_model * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim \
      + cfg.n_heads * cfg.head_dim * cfg.d_model
  per_layer = attn + 3 * cfg.d_model * cfg.d_ff + 2 * cfg.d_model
  head = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  return float(cfg.n_layers * per_layer + head + cfg.d_model)


def measure_shape(name: str, out_dir: pathlib.Path | None) -> latency.LatencyProfile:
  """The latency profile of a random-weight model of this shape on this device (synthetic)."""
  import jax
  from knapspec_jax import api
  from knapspec_jax import model as model_lib
  from knapspec_jax.compile_cache import CompileCache
  lens = sorted(int(a) for a in _ATTN_LENS.value)
  # The engine's defaults on this device, as load_model picks them (one-token kernel, the
  # windows', two-row projections on a GPU); ModelConfig's own are XLA and one row.
  attention = api.default_attention(_DTYPE.value)
  cfg = dataclasses.replace(shape_config(name, max(lens)), attention=attention,
                            window_attention=api.default_window_attention(attention),
                            matmul_rows=api.default_matmul_rows())
  dtype = api.DTYPES[_DTYPE.value]
  start = time.perf_counter()
  params = model_lib.fuse_projections(
      model_lib.init_random_params(cfg, jax.random.PRNGKey(0), dtype))
  jax.block_until_ready(params)
  print(f"{name}: {n_params(cfg) / 1e9:.2f} B parameters (random), "
        f"{model_lib.param_bytes(params) / 2**30:.1f} GiB; built in "
        f"{time.perf_counter() - start:.0f} s", flush=True)
  profile = latency.measure(params, cfg, dtype, f"synthetic-{name} (random weights)",
                            attn_lens=tuple(lens), windows=tuple(map(int, _WINDOWS.value)),
                            steps=_STEPS.value, repeats=_REPEATS.value, compiled=CompileCache(),
                            log=lambda s: print(f"  {name}{s}", flush=True))
  print(f"{name}: profile measured in {time.perf_counter() - start:.0f} s, fit errors "
        f"{profile.errors()}", flush=True)
  if out_dir:
    profile.save(out_dir / "profiles" / f"{name}.json")
  del params
  return profile


# ------------------------------------------------------------------------------- projection

def alpha_curve(fit: dict, k: float):
  return lambda f_attn, f_mlp: np.exp(-k * (fit["b_attn"] * f_attn + fit["b_mlp"] * f_mlp))


def best_draft(p: latency.LatencyProfile, n: int, alpha_fn, interval: int) -> dict:
  """The best (attention skipped, MLP skipped, gamma) at context n, or AR; first and last layer
  kept. Speedups relative to the profile's own AR step at n; with and without search cost."""
  L = p.n_layers
  na, nm = np.meshgrid(np.arange(L - 1), np.arange(L - 1), indexing="ij")  # up to L - 2 each
  alpha = alpha_fn(na / L, nm / L)[..., None]  # [A, M, 1]
  g = np.arange(1, GAMMA_MAX + 1)
  t_draft = (p.c0 + (L - na) * p.t_attn(n) + (L - nm) * p.m)[..., None]
  t_verify = np.asarray([p.t_verify(int(x) + 1, n) for x in g])
  t_round = g * t_draft + t_verify
  tokens = selection.expected_tokens(alpha, g)
  search = p.search_s(n)
  t_full = p.t_step(None, n)
  speed = tokens * t_full / t_round  # x AR, search not counted
  speed_search = interval * tokens * t_full / (interval * t_round + search)
  speed_search[0, 0] = -np.inf  # skipping nothing is not a draft
  i = np.unravel_index(int(np.argmax(speed_search)), speed_search.shape)
  best = dict(n_attn_skipped=int(i[0]), n_mlp_skipped=int(i[1]), gamma=int(g[i[2]]),
              alpha=float(alpha[i[0], i[1], 0]), speedup_no_search=float(speed[i]),
              speedup=float(speed_search[i]), search_share=float(
                  search / (interval * t_round[i] + search)))
  if best["speedup"] <= 1.0 + MARGIN:  # KnapSpec declines: plain AR
    best.update(n_attn_skipped=0, n_mlp_skipped=0, gamma=0, alpha=float("nan"), speedup=1.0,
                search_share=0.0, declined=True)
  return best


def calibrate(p: latency.LatencyProfile, n: int, fit: dict, target: float, interval: int):
  """k such that the projected speedup at n equals target (bisection on log k; speedup falls
  as k grows). None if even k -> 0 (alpha -> 1) stays below the target."""
  f = lambda k: best_draft(p, n, alpha_curve(fit, k), interval)["speedup"]
  lo, hi = 1e-4, 1e3
  if f(lo) < target:
    return None
  for _ in range(60):
    mid = np.sqrt(lo * hi)
    lo, hi = (mid, hi) if f(mid) >= target else (lo, mid)
  return float(lo)


def project(profiles: dict, fit: dict, out_dir: pathlib.Path | None):
  contexts = [int(c) for c in _CONTEXTS.value]
  cfgs = {name: shape_config(name, max(contexts)) for name in profiles}
  tag = f"{curve_of(fit).split('-')[0].lower()}_curve"
  scenarios = {f"{curve_of(fit)}'s acceptance curve (k=1)": (1.0, tag)}
  for shape, (speedup, at, label, tag) in PAPER_ANCHORS.items():
    if shape not in profiles:
      continue
    p = profiles[shape]
    n_cal = min(at or max(contexts), max(s[2] for s in p.step_samples) if p.step_samples
                else max(contexts))
    k = calibrate(p, n_cal, fit, speedup, _INTERVAL.value)
    if k is not None:
      scenarios[f"calibrated to the paper's {label} speedup (k={k:.2f})"] = (k, tag)
  rows = []
  for scenario, (k, _) in scenarios.items():
    for name, p in profiles.items():
      for n in contexts:
        b = best_draft(p, n, alpha_curve(fit, k), _INTERVAL.value)
        rows.append(dict(shape=name, params_b=n_params(cfgs[name]) / 1e9, context=n,
                         scenario=scenario, k=k, ar_ms=1e3 * p.t_step(None, n),
                         device=p.device, **b))
  lines = ["Latency profiles (measured; 'random' = a random-weight model of the shape, 'real' = "
           "the real model) and projected KnapSpec speedups (PROJECTION: acceptance "
           f"transplanted from {curve_of(fit)}, not measured on these shapes).",
           "", "| shape | weights | params (B) | context | AR ms/token (measured fit) | "
           "t_attn / t_mlp | verify 11 tok / 1 step | search ms |",
           "|---|---|---|---|---|---|---|---|"]
  for name, p in profiles.items():
    weights = "random" if p.model.startswith("synthetic") else "real"
    for n in contexts:
      lines.append(f"| {name} | {weights} | {n_params(cfgs[name]) / 1e9:.2f} | {n} | "
                   f"{1e3 * p.t_step(None, n):.2f} | {p.t_attn(n) / p.m if p.m else float('inf'):.2f} | "
                   f"{p.t_verify(11, n) / p.t_step(None, n):.2f} | {1e3 * p.search_s(n):.0f} |")
  for scenario in scenarios:
    lines += ["", f"Projected, {scenario}, one search per {_INTERVAL.value} rounds:", "",
              "| shape | context | choice (attn + MLP skipped of 2L, gamma) | alpha | "
              "best draft's projected x AR (no search) | projected x AR (with search) | "
              "search share |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
      if r["scenario"] != scenario:
        continue
      what = ("declines (AR)" if r.get("declined") else
              f"{r['n_attn_skipped']} + {r['n_mlp_skipped']} of {2 * profiles[r['shape']].n_layers},"
              f" gamma {r['gamma']}")
      lines.append(f"| {r['shape']} | {r['context']} | {what} | {r['alpha']:.2f} | "
                   f"{r['speedup_no_search']:.2f} | {r['speedup']:.2f} | "
                   f"{100 * r['search_share']:.1f}% |")
  text = "\n".join(lines)
  print(text)
  if not out_dir:
    return rows
  common.write_jsonl(out_dir / "projection.jsonl", rows)
  (out_dir / "summary.md").write_text(text + "\n")
  try:
    import plots
  except ImportError as e:  # e.g. a device machine without matplotlib
    print(f"no plots ({e}): redo them with --profiles_dir={out_dir / 'profiles'} elsewhere")
    return rows
  device = next(iter(profiles.values())).device
  real = [n for n, p in profiles.items() if not p.model.startswith("synthetic")]
  source = ("latencies measured" + (" with random weights" if len(real) < len(profiles) else "")
            + (f" ({', '.join(real)}: real weights)" if real and len(real) < len(profiles)
               else " on the real model" if real else "") + f" on {device}")
  plot_profiles(profiles, contexts, source, out_dir)
  for scenario, (k, tag) in scenarios.items():
    series = {}
    for k_shape, name in enumerate(profiles):
      sub = [r for r in rows if r["shape"] == name and r["scenario"] == scenario]
      color = f"C{k_shape}"
      series[f"{name}: KnapSpec (search paid, declines < 1.03x)"] = (
          [r["context"] for r in sub], [r["speedup"] for r in sub], dict(color=color))
      series[f"{name}: best draft, search free"] = (
          [r["context"] for r in sub], [r["speedup_no_search"] for r in sub],
          dict(color=color, ls="--", marker="x"))
    plots.lines(series, out_dir / f"projected_speedup_vs_context_{tag}.png", logx=True,
                xlabel="context length (tokens, log scale)",
                ylabel="PROJECTED speedup over AR (x)", hline=1.0, hline_label="AR",
                title=f"PROJECTION ({scenario}); {source}")
    if len(profiles) < 2:
      continue
    by_size = {}
    for n in (min(contexts), max(contexts)):
      sub = sorted((r["params_b"], r["speedup"]) for r in rows
                   if r["context"] == n and r["scenario"] == scenario)
      by_size[f"context {n}"] = tuple(zip(*sub))
    plots.lines(by_size, out_dir / f"projected_speedup_vs_size_{tag}.png", logx=True,
                xlabel="model size (billion parameters, log scale)",
                ylabel="PROJECTED speedup over AR (x)", hline=1.0, hline_label="AR",
                title=f"PROJECTION ({scenario}); {source}")
  return rows


def plot_profiles(profiles: dict, contexts, source: str, out_dir: pathlib.Path):
  """Three measured latency figures: sublayer cost against context, verify
  cost against window, search time against context."""
  import plots
  xs = np.asarray(contexts)
  series = {}
  for name, p in profiles.items():
    series[f"{name} attention"] = (xs, [1e6 * p.t_attn(n) for n in xs])
    series[f"{name} MLP"] = (xs, [1e6 * p.m for _ in xs])
  plots.lines(series, out_dir / "sublayer_cost_vs_context.png", logx=True, markers=False,
              xlabel="attention length (tokens, log scale)",
              ylabel="cost of one sublayer in a decode step (us)",
              title=f"Attention cost grows with context, MLP's does not ({source})")
  n = 4096
  series = {name: (np.arange(1, GAMMA_MAX + 1),
                   [p.t_verify(g + 1, n) / p.t_step(None, n) for g in range(1, GAMMA_MAX + 1)])
            for name, p in profiles.items()}
  plots.lines(series, out_dir / "verify_cost_vs_draft_length.png",
              xlabel="draft length gamma (verify window gamma + 1 tokens)",
              ylabel=f"verify time / one decode step (x, context {n})", hline=1.0,
              title=f"Verify cost against draft length ({source})")
  series = {name: (xs, [1e3 * p.search_s(n) for n in xs]) for name, p in profiles.items()}
  plots.lines(series, out_dir / "search_time_vs_context.png", logx=True,
              xlabel="context length (tokens, log scale)",
              ylabel="knapsack search time, R = 16 (ms)",
              title=f"Knapsack search time against context ({source})")


def main(argv):
  del argv
  out_dir = pathlib.Path(_OUT.value) if _OUT.value else None
  fit = json.loads(pathlib.Path(_FIT.value).read_text())
  if _PROFILES.value:
    found = {}
    for directory in _PROFILES.value:
      for path in sorted(pathlib.Path(directory).glob("*.json")):
        if path.stem in SHAPES:
          found.setdefault(path.stem, []).append(latency.LatencyProfile.load(path))
    profiles = {name: latency.merged(ps) for name, ps in found.items()}
  else:
    unknown = [s for s in _SHAPES.value if s not in SHAPES]
    if unknown:
      raise ValueError(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    profiles = {}
    for name in _SHAPES.value:
      profiles[name] = measure_shape(name, out_dir)
  for item in _ADD.value:
    name, _, path = item.partition("=")
    if name not in SHAPES:
      raise ValueError(f"--add_profiles: unknown shape {name!r}; known: {sorted(SHAPES)}")
    profiles[name] = latency.LatencyProfile.load(path)
  if not profiles:
    raise ValueError("no profiles to project from")
  profiles = dict(sorted(profiles.items(), key=lambda kv: n_params(shape_config(kv[0], 8192))))
  if _VERIFY_SCALE.value != 1.0:  # a what-if on top of the measured profiles, labelled so
    profiles = {name: dataclasses.replace(p.scaled(verify=_VERIFY_SCALE.value),
                                          device=f"{p.device} (verify excess x"
                                                 f"{_VERIFY_SCALE.value:g}: what-if)")
                for name, p in profiles.items()}
  project(profiles, fit, out_dir)
  if out_dir:
    print(f"wrote {out_dir}")


if __name__ == "__main__":
  app.run(main)
