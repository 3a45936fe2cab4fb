"""How much of AR's output a draft vocabulary holds (ModelConfig.draft_vocab): for every AR
record of the runs given, the share of its output tokens among the K ids a draft would score
(decoding.draft_vocab_ids: the model's end tokens, the prompt's, then the lowest ids). A token
outside cannot be drafted, so this bounds the acceptance a draft keeps; and what the smaller head
saves a draft step in bytes read (the head's rows not read, beside the step's bytes).

  python experiments/draft_vocab_coverage.py --ks=8192,16384,32768 \
      results/h200_qwen/*/results.jsonl.gz

The end tokens are Qwen2.5's (<|endoftext|> 151643, <|im_end|> 151645) unless --eos says others;
the vocabulary size and hidden size are the model's (--vocab_size, --d_model, Qwen2.5-Coder-1.5B
by default).
"""

import pathlib
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import decoding  # noqa: E402
from summarize import read_records  # noqa: E402

_KS = flags.DEFINE_list("ks", ["8192", "16384", "32768"], "Draft vocabulary sizes.")
_EOS = flags.DEFINE_list("eos", ["151643", "151645"], "The model's end token ids.")
_VOCAB = flags.DEFINE_integer("vocab_size", 151936, "The model's vocabulary.")
_D_MODEL = flags.DEFINE_integer("d_model", 1536, "The model's hidden size (head row length).")
_BYTES = flags.DEFINE_integer("head_bytes", 2, "Bytes per head weight (bfloat16: 2).")


def coverage(prompt_ids, output_ids, k: int, eos, vocab_size: int) -> float:
  """The share of output tokens among the draft vocabulary of this prompt."""
  ids = decoding.draft_vocab_ids(prompt_ids, eos, k, vocab_size)
  return float(np.isin(np.asarray(output_ids), ids).mean())


def main(argv):
  ks = [int(k) for k in _KS.value]
  eos = [int(e) for e in _EOS.value]
  seen = {}
  for path in argv[1:]:
    for r in read_records(path):
      if r.get("method") == "ar" and r.get("output_ids"):
        seen[(r["item_id"], len(r["output_ids"]))] = r  # one per prompt and length
  print("| prompt | prompt tokens | distinct | new tokens | "
        + " | ".join(f"K={k}" for k in ks) + " |")
  print("|---|---|---|---|" + "---|" * len(ks))
  for (item, n), r in sorted(seen.items()):
    cov = [coverage(r["prompt_ids"], r["output_ids"], k, eos, _VOCAB.value) for k in ks]
    print(f"| {item} | {len(r['prompt_ids'])} | {len(set(r['prompt_ids']))} | {n} | "
          + " | ".join(f"{c:.3f}" for c in cov) + " |")
  head = _VOCAB.value * _D_MODEL.value * _BYTES.value
  print(f"\nthe whole head: {head / 1e6:.0f} MB read per step; with K rows: "
        + ", ".join(f"K={k} {k * _D_MODEL.value * _BYTES.value / 1e6:.0f} MB" for k in ks))


if __name__ == "__main__":
  app.run(main)
