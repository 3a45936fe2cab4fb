"""Writes the prompts for the official-implementation run (experiments/gpu/run_official.py) as
chat-templated text, so the official code (which tokenizes raw text) sees the same tokens as ours.

  python experiments/gpu/official_prompts.py --output=.data/official_prompts.json
"""

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from knapspec_jax import checkpoint, datasets  # noqa: E402

_OUT = flags.DEFINE_string("output", ".data/official_prompts.json", "Where to write.")
_PER_CAT = flags.DEFINE_integer("per_category", 1, "Spec-Bench questions per category.")
_LONG = flags.DEFINE_list("long_lengths", ["2000", "4000"], "Long-document prompt lengths.")


def main(argv):
  del argv
  _, _, tok, _ = checkpoint.read_config_and_tokenizer()
  items = datasets.spec_bench_subset(_PER_CAT.value)
  items += [datasets.long_document_prompt(tok, int(n)) for n in _LONG.value]
  rows = []
  for it in items:
    ids = datasets.encode(tok, it)
    text = tok.decode(ids)
    assert list(tok(text)["input_ids"]) == list(ids), it["id"]  # round trip keeps the tokens
    rows.append({"id": it["id"], "category": it["category"], "text": text, "n_tokens": len(ids)})
  pathlib.Path(_OUT.value).write_text(json.dumps(rows))
  print(f"{len(rows)} prompts -> {_OUT.value}: " + ", ".join(f"{r['id']}({r['n_tokens']})" for r in rows))


if __name__ == "__main__":
  app.run(main)
