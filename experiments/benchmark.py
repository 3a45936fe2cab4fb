"""Decode-speed benchmark: methods x prompts on one compiled model; JSONL + Markdown table.

  python experiments/benchmark.py --methods=ar,knapspec --specbench_per_category=1 \
      --long_lengths=2000,4000,7500 --max_new_tokens=128 --output_dir=results/cpu

Every method runs on the same loaded model and compile cache; AR is the baseline. Warm-up
compiles (prefill and AR programs) happen before each timed run and are reported apart; any
compile a method triggers while decoding (a new skip set) counts in its decode time.
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, latency  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "GGUF file or HF dir; default: bundled SmolLM2.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params/KV dtype.")
_METHODS = flags.DEFINE_list("methods", ["ar"], "Methods to run (ar is always run first).")
_PER_CAT = flags.DEFINE_integer("specbench_per_category", 0, "Spec-Bench items per category.")
_CATEGORIES = flags.DEFINE_list("categories", [], "Restrict Spec-Bench to these categories.")
_LONG = flags.DEFINE_list("long_lengths", [], "Long-context summarization prompt lengths.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per prompt.")
_IGNORE_EOS = flags.DEFINE_bool("ignore_eos", True, "Generate exactly max_new_tokens.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per (method, prompt); median kept.")
_WARMUP_RUNS = flags.DEFINE_integer(
    "warmup_runs", 1, "Untimed runs per (method, prompt) first: the first execution of a "
    "compiled program pays one-off costs (module load) that compiling ahead does not.")
_OUT = flags.DEFINE_string("output_dir", None, "Write results.jsonl and table.md here.")
_PROFILE = flags.DEFINE_string("profile", None, "Latency profile JSON (default: stored/measured).")
_OPTIONS = flags.DEFINE_list("method_options", [], "Method settings as method.field=value, e.g. "
                             "knapspec.search_budget=1.0 (fields of the method's config).")
_NOISE = flags.DEFINE_bool("noise_floor", False, "Run AR a second time (reported as ar-rerun): "
                           "the run-to-run spread that any speedup must exceed.")


def method_options() -> dict:
  options: dict = {}
  for item in _OPTIONS.value:
    key, value = item.split("=", 1)
    method, field = key.split(".", 1)
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      pass
    options.setdefault(method, {})[field] = value
  return options


def prompts(tokenizer) -> list[dict]:
  items = datasets.spec_bench_subset(_PER_CAT.value, _CATEGORIES.value or None) \
      if _PER_CAT.value else []
  items += [datasets.long_document_prompt(tokenizer, int(n)) for n in _LONG.value]
  return items


def main(argv):
  del argv
  model = ks.load_model(_MODEL.value, dtype=_DTYPE.value)
  if _PROFILE.value:
    model.profile = ks.LatencyProfile.load(_PROFILE.value)
  methods = ["ar"] + (["ar-rerun"] if _NOISE.value else []) + [
      m for m in _METHODS.value if m != "ar"]
  options = method_options()
  items = prompts(model.tokenizer)
  device = latency.device_name()
  print(f"{model.name} {model.dtype} on {device}; {len(items)} prompts; methods {methods}")
  out_dir = pathlib.Path(_OUT.value) if _OUT.value else None
  if out_dir:
    out_dir.mkdir(parents=True, exist_ok=True)
    sink = open(out_dir / "results.jsonl", "w")
  rows = []
  for i, item in enumerate(items):
    ids = datasets.encode(model.tokenizer, item)
    ar_tps = None
    for method in methods:
      run = lambda: ks.generate(model, ids, _MAX_NEW.value, method=method.removesuffix("-rerun"),
                                ignore_eos=_IGNORE_EOS.value, **options.get(method, {}))
      for _ in range(_WARMUP_RUNS.value):
        run()
      runs = [run() for _ in range(_REPEATS.value)]
      runs.sort(key=lambda r: r.tokens_per_s)
      r = runs[len(runs) // 2]
      if method == "ar":
        ar_tps, ar_ids, ar_e2e = r.tokens_per_s, r.output_ids, r.e2e_tokens_per_s
      record = dict(item_id=item["id"], category=item["category"], prompt_tokens=len(ids),
                    device=device, dtype=model.dtype, model=model.name, date=time.strftime("%F"),
                    repeats=_REPEATS.value,
                    tokens_per_s_all=[x.tokens_per_s for x in runs],
                    speedup=r.tokens_per_s / ar_tps,
                    e2e_speedup=r.e2e_tokens_per_s / ar_e2e,
                    identical_to_ar=r.output_ids == ar_ids,
                    **(r.to_json() | {"method": method}))
      record.pop("text")
      rows.append(record)
      if out_dir:
        sink.write(json.dumps(record) + "\n")
        sink.flush()
      s = r.stats
      print(f"[{i + 1}/{len(items)}] {item['id']:<22} {len(ids):5d} tok  {method:<9} "
            f"{r.tokens_per_s:7.1f} tok/s  {record['speedup']:.2f}x  "
            f"acc {s.get('acceptance_rate') or 0:.2f}  search {s.get('search_s', 0):.2f}s  "
            f"compile {s.get('compile_in_decode_s', 0):.1f}s  "
            f"{'=' if record['identical_to_ar'] else 'DIFFERENT'}", flush=True)
  table = markdown_table(rows, methods)
  print(table)
  if out_dir:
    sink.close()
    (out_dir / "table.md").write_text(table + "\n")


def markdown_table(rows, methods) -> str:
  lines = ["| prompt | tokens | " + " | ".join(f"{m} tok/s (x AR)" for m in methods) + " |",
           "|---|---|" + "---|" * len(methods)]
  by_item: dict = {}
  for r in rows:
    by_item.setdefault((r["item_id"], r["prompt_tokens"]), {})[r["method"]] = r
  for (item, n), per in by_item.items():
    cells = []
    for m in methods:
      r = per.get(m)
      cells.append("" if r is None else f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}x)"
                   + ("" if r["identical_to_ar"] else " DIFF"))
    lines.append(f"| {item} | {n} | " + " | ".join(cells) + " |")
  for m in methods:
    sp = [r["speedup"] for r in rows if r["method"] == m]
    if sp:
      lines.append(f"\n{m}: median speedup {statistics.median(sp):.3f}x over {len(sp)} prompts, "
                   f"min {min(sp):.3f}x")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
