"""Decode-speed benchmark: methods x prompts on one compiled model; JSONL, Markdown table, plots.

  python experiments/benchmark.py --config=configs/cpu_default.py
  python experiments/benchmark.py --config=configs/cpu_full.py --config.methods=ar,knapspec \
      --config.method_options=knapspec.search_budget=1.0 --config.output_dir=/tmp/run

The config (configs/*.py, every field documented in configs/base.py) names the model, methods,
prompts (Spec-Bench subset, long-context summarization lengths) and output folder; any field can
be overridden with --config.<field>=value. The older flags (--methods, --long_lengths, ...) still
work: they override the config's field of the same name, and without --config they start from
the old defaults (AR only, no prompts unless asked, 128 new tokens).

Output folder: config.output_dir, or by default a new one, results/tmp/<config name>-<time>/.
A folder that exists and is not empty is refused unless --overwrite is given, so the committed
results (results/cpu/..., results/h200/...) are only rewritten on purpose, e.g.
  python experiments/benchmark.py --config=configs/cpu_default.py \
      --config.output_dir=results/cpu/default --overwrite

Every method runs on the same loaded model and compile cache; AR runs first and is the
baseline. Warm-up compiles (prefill and AR programs) happen before each timed run and are
reported apart; a compile a method triggers while decoding (a new skip set) counts in its
decode time. Output: results.jsonl (one record per method and prompt, every run statistic),
table.md (summarize.py's tables; with AR's rerun at a width, `ar-rerun.width=W`, also each
method's text and paired speed against it), config.json, plots/speedup.png, plots/speed_vs_context.png.
"""

import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags
import ml_collections
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import api, datasets, decoding, latency, metrics  # noqa: E402
from knapspec_jax.config import ATTENTION_IMPLS  # noqa: E402
import common  # noqa: E402
import summarize  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "cpu_default.py"), "Benchmark config (configs/*.py).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Write into an output folder that already holds files (their "
    "results.jsonl, table.md, config.json and plots are replaced). Without it such a folder is "
    "refused before the model loads.")

# The flags of earlier versions (experiments/gpu/run_*.sh use them): each overrides the config
# field of the same name when given.
_LEGACY = dict(
    model=flags.DEFINE_string("model", None, "GGUF file or HF dir (config.model)."),
    dtype=flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "config.dtype"),
    attention=flags.DEFINE_enum("attention", None, list(ATTENTION_IMPLS), "config.attention"),
    methods=flags.DEFINE_list("methods", None, "config.methods"),
    specbench_per_category=flags.DEFINE_integer("specbench_per_category", None,
                                                "config.specbench_per_category"),
    categories=flags.DEFINE_list("categories", None, "config.categories"),
    long_lengths=flags.DEFINE_list("long_lengths", None, "config.long_lengths"),
    max_new_tokens=flags.DEFINE_integer("max_new_tokens", None, "config.max_new_tokens"),
    ignore_eos=flags.DEFINE_bool("ignore_eos", None, "config.ignore_eos"),
    repeats=flags.DEFINE_integer("repeats", None, "config.repeats"),
    warmup_runs=flags.DEFINE_integer("warmup_runs", None, "config.warmup_runs"),
    output_dir=flags.DEFINE_string("output_dir", None, "config.output_dir"),
    profile=flags.DEFINE_string("profile", None, "config.profile"),
    method_options=flags.DEFINE_list("method_options", None, "config.method_options"),
    noise_floor=flags.DEFINE_bool("noise_floor", None, "config.noise_floor"),
)


def _split(value: str) -> list[str]:
  return [v.strip() for v in str(value).split(",") if v.strip()]


def prompts(config, tokenizer) -> list[dict]:
  """The Spec-Bench subset, then the long-context documents (each with its own token budget),
  config.long_documents of each length."""
  items = (datasets.spec_bench_subset(config.specbench_per_category,
                                      _split(config.categories) or None)
           if config.specbench_per_category else [])
  items = [dict(item, max_new_tokens=config.max_new_tokens, repeats=config.repeats)
           for item in items]
  long_new = config.long_max_new_tokens or config.max_new_tokens
  items += [dict(doc, max_new_tokens=long_new, repeats=config.long_repeats or config.repeats)
            for n in _split(config.long_lengths)
            for doc in datasets.long_documents(tokenizer, int(n), config.long_documents)]
  return items


def output_dir(config, overwrite: bool = False) -> pathlib.Path:
  """The folder a run writes to: config.output_dir, or a new results/tmp/<name>-<time>/.

  Raises FileExistsError for a folder that already holds files, unless overwrite."""
  if not config.output_dir:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return REPO / "results" / "tmp" / f"{config.name}-{stamp}"
  out = pathlib.Path(config.output_dir)
  if not overwrite and out.is_dir() and any(out.iterdir()):
    raise FileExistsError(f"the output folder {out} already holds files: pass --overwrite to "
                          "replace them, or choose another with --config.output_dir=...")
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"the output folder {out} is a file")
  return out


# A child process's run (ar_alone): the config as JSON in argv[2], the repository in argv[1].
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1] + "/experiments")
import benchmark, ml_collections
benchmark.run(ml_collections.ConfigDict(json.loads(sys.argv[2])))
"""


def ar_alone(config, out_dir: pathlib.Path) -> dict[str, list[float]]:
  """AR on the config's prompts in a child process where no other method runs (config.ar_alone;
  its own warm-up and timed runs, its output in out_dir/ar_alone): item id -> its timed runs'
  tokens/s. On the H200 AR decoded Qwen2.5-Coder-1.5B's 2K document at 625 tok/s alone and at
  573 after the other methods' warm-ups in the same process (BENCHMARKS.md 10.18), until the
  search's programs were compiled without XLA's latency-hiding scheduler (10.25): the check that
  the same process costs AR nothing."""
  child = ml_collections.ConfigDict(json.loads(config.to_json()))
  child.update(dict(methods="ar", noise_floor=False, ar_alone=False, plots=False,
                    output_dir=str(out_dir / "ar_alone")))
  print("AR alone, in a child process:", flush=True)
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), child.to_json()])
  if proc.returncode:
    raise RuntimeError(f"the AR-alone child process failed (exit {proc.returncode})")
  records = [json.loads(line) for line in open(out_dir / "ar_alone" / "results.jsonl")]
  return {r["item_id"]: r["tokens_per_s_runs"] for r in records}


def run(config, overwrite: bool = False) -> list[dict]:
  """Runs the benchmark a config describes; returns the records, also written to its output
  folder (output_dir)."""
  started = time.perf_counter()
  out_dir = output_dir(config, overwrite)
  # First, before this process loads a model: the child has the device to itself.
  alone = ar_alone(config, out_dir) if config.get("ar_alone") else {}
  requested = _split(config.methods)
  unknown = [m for m in requested if m not in ks.available_methods()]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; available: {ks.available_methods()}")
  methods = ["ar"] + (["ar-rerun"] if config.noise_floor else []) + [
      m for m in requested if m != "ar"]
  options = common.method_options(config.method_options)
  model = ks.load_model(config.model or None, dtype=config.dtype,
                        attention=config.attention or None,
                        window_attention=config.window_attention or None,
                        draft_vocab=config.get("draft_vocab", 0),
                        segment_graphs=config.get("segment_graphs"))
  if config.profile:
    model.profile = ks.LatencyProfile.load(config.profile)
  items = prompts(config, model.tokenizer)
  if not items:
    raise ValueError("the config selects no prompts: set specbench_per_category and/or "
                     "long_lengths")
  encoded = [datasets.encode(model.tokenizer, item) for item in items]
  # every prompt checked before any runs: a long run fails at its start, not at its end
  for item, ids in zip(items, encoded):
    try:
      decoding.validate_request(model.cfg, len(ids), item["max_new_tokens"])
    except decoding.PromptError as e:
      raise decoding.PromptError(f"prompt {item['id']}: {e}") from None
  device = latency.device_name()
  print(f"{model.name} {model.dtype} on {device}; {len(items)} prompts x {len(methods)} "
        f"methods; loaded in {time.perf_counter() - started:.0f} s", flush=True)
  out_dir.mkdir(parents=True, exist_ok=True)
  print(f"writing to {out_dir}", flush=True)
  read_gbps = latency.device_read_gbps(model.profile)
  print(f"read bandwidth of {device}: {read_gbps:.1f} GB/s (sum over a large array)", flush=True)
  (out_dir / "config.json").write_text(config.to_json(indent=1) + "\n")
  sink = open(out_dir / "results.jsonl", "w")
  rows = []
  totals = {m: [0, 0.0] for m in methods}  # new tokens, decode seconds
  for i, (item, ids) in enumerate(zip(items, encoded)):
    run_once = lambda method: ks.generate(
        model, ids, item["max_new_tokens"], method=method.removesuffix("-rerun"),
        ignore_eos=config.ignore_eos, **options.get(method, {}))
    # Every method's untimed runs first, then the timed ones: on the H100, AR timed in a
    # process where only AR's programs had run yet measured 1.2x its later speed on the same
    # prompt (BENCHMARKS.md), which would bias the first prompt's ratios.
    # What each untimed run decided and measured is kept: a policy that learns across runs
    # (KnapSpec's kept drafts and search gains) made the timed runs' choices there.
    warm = {method: [run_once(method) for _ in range(config.warmup_runs)] for method in methods}
    # With background_compile on (off by default: controller.background_compile_default), a skip
    # set chosen in a run compiles in a background thread; no timed run shares the host with it.
    model.compiled.wait_background()
    # Timed runs round-robin over the methods, so that a slow stretch of the machine (measured:
    # AR against its own rerun spreads 0.98-1.05x on the 2-vCPU CPU) falls on all of them.
    timed = {method: [] for method in methods}
    for _ in range(item["repeats"]):
      for method in methods:
        timed[method].append(run_once(method))
        model.compiled.wait_background()
    for method in methods:
      runs = sorted(timed[method], key=lambda r: r.tokens_per_s)
      r = runs[len(runs) // 2]
      if method == "ar":
        ar = r
      # Each repeat's run against the AR run of the same repeat, seconds apart: a machine whose
      # speed drifts over minutes (the 2-vCPU VM) moves both alike, so this median cancels it.
      paired = metrics.paired_speedup(timed[method], timed["ar"]).decode
      record = dict(item_id=item["id"], category=item["category"], prompt_tokens=len(ids),
                    device=device, dtype=model.dtype, attention=model.cfg.attention,
                    window_attention=model.cfg.window_attention,
                    draft_vocab=model.cfg.draft_vocab, segment_graphs=model.cfg.segment_graphs,
                    model=model.name, date=time.strftime("%F"),
                    config=config.name, repeats=item["repeats"],
                    tokens_per_s_all=[x.tokens_per_s for x in runs],
                    tokens_per_s_runs=[x.tokens_per_s for x in timed[method]],  # run order
                    speedup=r.tokens_per_s / ar.tokens_per_s, paired_speedup=paired,
                    e2e_speedup=r.e2e_tokens_per_s / ar.e2e_tokens_per_s,
                    identical_to_ar=r.output_ids == ar.output_ids,
                    departs_at=metrics.departs_at(r.output_ids, ar.output_ids),
                    # a draft's speed depends on the text: a loop drafts almost for free
                    distinct_8gram_share=metrics.distinct_share(r.output_ids),
                    warmup_windows=[w.stats.get("window_log") for w in warm[method]],
                    # the untimed runs' speeds: AR's feed Model.ar_speeds, which judge kept drafts
                    warmup_tokens_per_s=[w.tokens_per_s for w in warm[method]],
                    # every timed run's windows (the record's stats are the median run's)
                    timed_windows=[x.stats.get("window_log") for x in timed[method]],
                    **(r.to_json() | {"method": method}))
      if item["id"] in alone:  # the median run over AR's median in a process of its own
        record["ar_alone_tokens_per_s"] = statistics.median(alone[item["id"]])
        record["speedup_vs_ar_alone"] = r.tokens_per_s / record["ar_alone_tokens_per_s"]
      record.pop("text")
      # The bytes a full step reads at the run's mean context, per measured time per token.
      record.update(metrics.bandwidth(
          metrics.step_bytes(model.params, model.cfg, len(ids) + r.new_tokens // 2,
                             api.DTYPES[model.dtype]), 1 / r.tokens_per_s, read_gbps))
      rows.append(record)
      sink.write(json.dumps(record) + "\n")
      sink.flush()
      totals[method][0] += r.new_tokens
      totals[method][1] += r.decode_s
      s = r.stats
      print(f"[prompt {i + 1}/{len(items)}] {item['id']:<18} {len(ids):5d} tok  {method:<9}"
            f"{r.tokens_per_s:7.1f} tok/s {1e3 / r.tokens_per_s:6.2f} ms/tok "
            f"{metrics.format_bandwidth(record)}  {record['speedup']:5.2f}x AR  "
            + (f"{record['speedup_vs_ar_alone']:5.2f}x AR alone  "
               if "speedup_vs_ar_alone" in record else "")
            + f"acc {s.get('acceptance_rate') or 0:.2f}  search {s.get('search_s', 0):.2f}s  "
            + ("same as AR" if record["identical_to_ar"]
               else f"DIFFERENT from token {record['departs_at']}")
            + f"  | so far {totals[method][0] / totals[method][1]:.1f} tok/s, "
            f"{time.perf_counter() - started:.0f} s elapsed", flush=True)
    # after every prompt: a run that fails or is killed later (BENCH_TIMEOUT on the GPU
    # machine) still leaves the table of the prompts it finished
    table = tables(rows, against="ar-rerun" if options.get("ar-rerun", {}).get("width") else None)
    (out_dir / "table.md").write_text(table + "\n")
  print(table)
  sink.close()
  if config.plots:
    write_plots(rows, out_dir, f"{config.name}: {model.name} {model.dtype}, {device}")
  print(f"wrote {out_dir}/results.jsonl, table.md, plots/ "
        f"({time.perf_counter() - started:.0f} s in all)")
  return rows


def tables(rows, against: str | None = None) -> str:
  """table.md: the speed table and the method table, and with `against` (AR's rerun at a
  width) each method's text and speed against that method's."""
  table = summarize.speed_table(rows) + "\n\n" + summarize.method_table(rows)
  return table + ("\n\n" + summarize.against_table(rows, against) if against else "")


def write_plots(rows, out_dir: pathlib.Path, title: str):
  try:
    import plots
  except ImportError as e:  # e.g. a device machine without matplotlib
    print(f"no plots ({e}); make them elsewhere with experiments/plots.py from results.jsonl")
    return
  plots.speedup_bars(rows, out_dir / "plots" / "speedup.png", title)
  plots.speed_vs_context(rows, out_dir / "plots" / "speed_vs_context.png", title)


def main(argv):
  del argv
  config = _CONFIG.value
  given = {field: flag.value for field, flag in _LEGACY.items() if flags.FLAGS[flag.name].present}
  if given and not flags.FLAGS["config"].present:
    config = legacy_config()
  for field, value in given.items():
    config[field] = ",".join(value) if isinstance(value, list) else value
  try:
    output_dir(config, _OVERWRITE.value)
  except FileExistsError as e:
    print(f"benchmark.py: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    run(config, _OVERWRITE.value)
  except decoding.PromptError as e:
    print(f"benchmark.py: {e}", file=sys.stderr)
    sys.exit(2)


def legacy_config():
  """The defaults of the flag-only benchmark, for the command lines recorded before configs."""
  sys.path.insert(0, str(REPO))
  from configs import base
  config = base.get_config()
  config.update(dict(name="flags", methods="ar", specbench_per_category=0, long_lengths="",
                     max_new_tokens=128))
  return config


if __name__ == "__main__":
  app.run(main)
