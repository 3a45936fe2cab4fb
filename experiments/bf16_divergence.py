"""How often bfloat16 speculative decoding differs from bfloat16 AR, and where it first differs.

  python experiments/bf16_divergence.py --max_new_tokens=64 --output=results/cpu/reliability/bf16.jsonl

In bf16 a verify forward over gamma + 1 tokens and a one-token AR step run different kernel
shapes and round differently, so near-ties can flip. For each Spec-Bench prompt (first item of
each category) this runs bf16 AR, every listed method, and AR with `width=gamma + 1` (each AR step
as a forward of the fixed method's verify shape), and prints the first position where each
output differs from AR. With --width=W every method also runs with every full-model forward
W positions wide (verify windows padded, plain steps too) and is compared with AR at width W.
Methods get a latency profile under which drafting pays (as in
check_lossless.py), so that they draft instead of declining.
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, metrics  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens per generation.")
_PER_CAT = flags.DEFINE_integer("per_category", 1, "Spec-Bench items per category.")
_METHODS = flags.DEFINE_list("methods", ["fixed", "del", "knapspec"], "Methods.")
_GAMMA = flags.DEFINE_integer("gamma", 4, "The fixed method's draft length.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Params and KV dtype.")
_OUT = flags.DEFINE_string("output", None, "JSONL output, one line per prompt.")
_WIDTH = flags.DEFINE_integer(
    "width", None, "Run every method at this width too (every full-model forward this many "
    "positions wide; at least gamma_max + 1) and compare with AR at the same width.")


def main(argv):
  del argv
  model = ks.load_model(dtype=_DTYPE.value)
  model.profile = LatencyProfile(device="synthetic: drafting pays", model=model.name,
                                 dtype=_DTYPE.value, n_layers=model.cfg.n_layers, c0=1e-4,
                                 a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)
  configs = {"fixed": ks.FixedConfig(gamma=_GAMMA.value),
             "del": ks.DelConfig(interval=8),
             "knapspec": ks.KnapSpecConfig(interval=8, search_budget=10.0, margin=0.0),
             "clasp": ks.ClaspConfig()}
  width = _GAMMA.value + 1
  items = datasets.spec_bench_subset(_PER_CAT.value)
  sink = open(_OUT.value, "w") if _OUT.value else None
  rows = []
  start = time.time()
  for i, item in enumerate(items):
    ids = datasets.encode(model.tokenizer, item)
    n = _MAX_NEW.value
    ar = ks.generate(model, ids, n, ignore_eos=True).output_ids
    wide = ks.generate(model, ids, n, ignore_eos=True, width=width).output_ids
    row = {"item_id": item["id"], "category": item["category"], "prompt_tokens": len(ids),
           "max_new_tokens": n, "dtype": _DTYPE.value,
           f"ar_width{width}_vs_ar": metrics.departs_at(wide, ar)}
    for method in _METHODS.value:
      got = ks.generate(model, ids, n, method=method, ignore_eos=True, config=configs[method])
      row[f"{method}_vs_ar"] = metrics.departs_at(got.output_ids, ar)
      row[f"{method}_vs_ar_width{width}"] = metrics.departs_at(got.output_ids, wide)
      row[f"{method}_rounds"] = got.stats["speculation_steps"]
      if _WIDTH.value:
        w = _WIDTH.value
        if f"ar_width{w}" not in row:
          row[f"ar_width{w}"] = ks.generate(model, ids, n, ignore_eos=True, width=w).output_ids
        at_w = ks.generate(model, ids, n, method=method, ignore_eos=True,
                           config=configs[method], width=w)
        row[f"{method}_width{w}_vs_ar_width{w}"] = metrics.departs_at(
            at_w.output_ids, row[f"ar_width{w}"])
    row.pop(f"ar_width{_WIDTH.value}", None)
    rows.append(row)
    if sink:
      sink.write(json.dumps(row) + "\n")
      sink.flush()
    print(f"[{i + 1}/{len(items)}] {item['id']:<16} "
          + " ".join(f"{k}={v}" for k, v in row.items() if "_vs_" in k)
          + f" [{time.time() - start:.0f} s]", flush=True)

  print(f"\n{len(rows)} prompts, {_MAX_NEW.value} new tokens, {_DTYPE.value}; first difference "
        "from AR (token index), None = identical")
  keys = [k for k in rows[0] if "_vs_" in k]
  for k in keys:
    firsts = [r[k] for r in rows if r[k] is not None]
    where = (f"first difference at token {min(firsts)}..{max(firsts)} (median "
             f"{statistics.median(firsts):g})" if firsts else "")
    print(f"  {k:<26} differs on {len(firsts)}/{len(rows)} prompts {where}")


if __name__ == "__main__":
  app.run(main)
