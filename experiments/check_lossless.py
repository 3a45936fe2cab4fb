"""Lossless check: every speculative method's output equals AR's, token for token (float32).

  python experiments/check_lossless.py --per_category=2 --long_lengths=2000,3000,4000,6000

KnapSpec is given a latency profile under which drafting pays (sublayers are all the cost,
verification as cheap as a step), so that it drafts instead of declining: this checks the
speculative path, not plain decoding. Writes one JSON line per (method, prompt).
"""

import json
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

_PER_CAT = flags.DEFINE_integer("per_category", 2, "Spec-Bench items per category.")
_LONG = flags.DEFINE_list("long_lengths", ["2000", "3000", "4000", "6000"], "Long prompts.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 24, "Tokens per generation.")
_METHODS = flags.DEFINE_list("methods", ["knapspec", "clasp", "del", "fixed"], "Methods.")
_OUT = flags.DEFINE_string("output", None, "JSONL output.")


def main(argv):
  del argv
  model = ks.load_model()
  model.profile = LatencyProfile(device="synthetic: drafting pays", model=model.name,
                                 dtype="float32", n_layers=model.cfg.n_layers, c0=1e-4,
                                 a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)
  configs = {"knapspec": ks.KnapSpecConfig(interval=8, search_budget=10.0, margin=0.0),
             "clasp": ks.ClaspConfig(), "del": ks.DelConfig(interval=8), "fixed": ks.FixedConfig()}
  items = datasets.spec_bench_subset(_PER_CAT.value)
  items += [datasets.long_document_prompt(model.tokenizer, int(n)) for n in _LONG.value]
  sink = open(_OUT.value, "w") if _OUT.value else None
  passed = failed = 0
  start = time.time()
  for i, item in enumerate(items):
    ids = datasets.encode(model.tokenizer, item)
    want = ks.generate(model, ids, _MAX_NEW.value, ignore_eos=True).output_ids
    for method in _METHODS.value:
      got = ks.generate(model, ids, _MAX_NEW.value, method=method, ignore_eos=True,
                        config=configs[method])
      same = got.output_ids == want
      passed, failed = passed + same, failed + (not same)
      rec = dict(item_id=item["id"], prompt_tokens=len(ids), method=method, identical=same,
                 speculation_steps=got.stats["speculation_steps"],
                 accepted_tokens=got.stats["accepted_tokens"],
                 drafted_tokens=got.stats["drafted_tokens"])
      if sink:
        sink.write(json.dumps(rec) + "\n")
        sink.flush()
      print(f"[{i + 1}/{len(items)}] {item['id']:<20} {len(ids):5d} tok {method:<9} "
            f"{'identical' if same else 'DIFFERENT'} (rounds {rec['speculation_steps']}, "
            f"accepted {rec['accepted_tokens']}/{rec['drafted_tokens']}) "
            f"[{time.time() - start:.0f} s]", flush=True)
  print(f"{len(items)} prompts x {len(_METHODS.value)} methods")
  print(f"{passed} passed, {failed} failed")


if __name__ == "__main__":
  app.run(main)
