"""Why does the bf16 text differ between two machines of one kind? AR's greedy text on the
documents, against the AR texts recorded on other machines.

  python experiments/gpu/text_by_autotuning.py --gguf=$QWEN_GGUF --label=default \
      REFERENCE/results.jsonl.gz ...

On two H100s (BENCHMARKS.md 10.38) Qwen2.5-Coder-1.5B's AR text at 16K departed from the
other's at token 55, with the same code, jax and GPU model, and the same KnapSpec draft then
accepted 0.97 of its tokens on one machine's 28K text and 0.81 on the other's (1.44x against
1.24x AR). The lead: XLA times candidate kernels for each GEMM and fusion when it compiles
(autotuning) and keeps the fastest, and kernels that sum in another order round bf16
differently. This reruns, for each AR record of the reference files whose item is in --items,
the same prompt (the record's prompt_ids) with the record's model settings, twice in this
process, and prints where its output departs from each reference's AR output and from its own
first run. run_text_by_autotuning.sh runs it in fresh processes with a fresh compilation cache
each: XLA's defaults, the same again, autotuning off (--xla_gpu_autotune_level=0), and the
autotuning results of another machine loaded (AUTOTUNE_FROM). Same text with autotuning off on
two machines, different with it on: the autotuner chooses the text, and the results it measured
can travel with the latency profile. Records -> --output (JSON).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import knapspec_jax as ks  # noqa: E402
from shapes import write_records  # noqa: E402
from summarize import read_records  # noqa: E402
from knapspec_jax import latency, metrics  # noqa: E402

_GGUF = flags.DEFINE_string("gguf", None, "The checkpoint the references ran (default: "
                            "load_model's default model).")
_ITEMS = flags.DEFINE_list("items", ["longdoc-16000-0", "longdoc-28000-0"], "Item ids of the "
                           "reference records to rerun.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Tokens generated (compared with the "
                            "references' first as many).")
_LABEL = flags.DEFINE_string("label", "default", "What this process's XLA settings are.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/text_<label>.json).")


def references(paths, items) -> list[tuple[str, dict]]:
  """(path, AR record) for each AR record of the files whose item is in `items`."""
  return [(str(p), r) for p in paths for r in read_records(p)
          if r.get("method") == "ar" and r.get("item_id") in items]


def main(argv):
  items = _ITEMS.value
  refs = references(argv[1:], items)
  if not refs:
    raise SystemExit(f"no AR record of items {items} in {argv[1:]}")
  new = _NEW.value
  first = refs[0][1]
  model = ks.load_model(_GGUF.value, dtype=first["dtype"],
                        attention=first.get("attention") or None,
                        window_attention=first.get("window_attention") or None,
                        draft_vocab=first.get("draft_vocab") or 0,
                        segment_graphs=bool(first.get("segment_graphs")))
  device = latency.device_name()
  print(f"{model.name} {model.dtype} on {device} ({_LABEL.value}); {len(refs)} reference "
        f"records; {new} new tokens")
  records = []
  for item in items:
    mine = [(path, r) for path, r in refs if r["item_id"] == item]
    if not mine:
      continue
    prompt = mine[0][1]["prompt_ids"]
    runs = [ks.generate(model, prompt, new, ignore_eos=True).output_ids for _ in range(2)]
    record = dict(label=_LABEL.value, device=device, item_id=item, new_tokens=new,
                  output_ids=runs[0],
                  second_run_departs_at=metrics.departs_at(runs[0], runs[1]),
                  against=[dict(path=path, device=r.get("device"), date=r.get("date"),
                                departs_at=metrics.departs_at(runs[0], r["output_ids"][:new]))
                           for path, r in mine])
    records.append(record)
    print(f"\n{item} ({len(prompt)} prompt tokens): this process's second run departs at "
          f"{record['second_run_departs_at']}")
    for a in record["against"]:
      print(f"  against {a['path']} ({a['device']}, {a['date']}): departs at {a['departs_at']}")
  out = write_records(records, _OUTPUT.value, f"text_{_LABEL.value}.json")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  app.run(main)
