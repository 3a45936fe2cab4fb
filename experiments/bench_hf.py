"""The outside reference: Hugging Face transformers `generate` on the same model and prompts.

  python experiments/bench_hf.py --specbench_per_category=1 --long_lengths=2000,4000,7000 \
      --max_new_tokens=128 --device=cuda --output=results/hf.jsonl \
      --ours=results/<gpu>/specbench/results.jsonl

Prompts are the benchmark's (experiments/benchmark.py): the first `specbench_per_category`
Spec-Bench questions of each category, then summarization documents of `long_lengths` tokens,
chat-templated to the same ids as ours. A length under 300 in `long_lengths` stands for the
first writing question (the runs of earlier sessions).

Decode tokens/s = (N - 1) / (t(N new tokens) - t(1 new token)): prefill is excluded, as in
our own `tokens_per_s`. Two modes: eager (dynamic cache) and StaticCache + torch.compile. In the
compiled mode one StaticCache of a fixed length serves every prompt (reset between runs), so the
decode step compiles once rather than once per prompt length.

--ours: benchmark.py JSONL files; prints, per prompt, our AR decode tokens/s over HF's. With
--records (earlier --output files) it only prints that comparison:

  python experiments/bench_hf.py --records=hf_eager.jsonl,hf_compiled.jsonl --ours=a.jsonl,b.jsonl
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from knapspec_jax import checkpoint, datasets, packaged_models  # noqa: E402
import summarize  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "GGUF file, HF checkpoint directory or a packaged "
                             "model's name; default: the bundled SmolLM2.")
_PER_CATEGORY = flags.DEFINE_integer("specbench_per_category", 0,
                                     "Spec-Bench questions per category (0: none).")
_LENGTHS = flags.DEFINE_list("long_lengths", ["100", "4000", "7500"],
                             "Document lengths in tokens; under 300: the first writing question.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens generated per timed run.")
_DEVICE = flags.DEFINE_string("device", "cuda", "torch device.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "dtype.")
_MODES = flags.DEFINE_list("modes", ["eager", "compiled"], "eager and/or compiled.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; median kept.")
_COMPILE_MODE = flags.DEFINE_string(
    "compile_mode", "default", "torch.compile mode for --modes=compiled. 'reduce-overhead' "
    "(CUDA graphs) failed on the H100 with transformers 5.23 / torch 2.11: 'accessing tensor "
    "output of CUDAGraphs that has been overwritten by a subsequent run'.")
_OUT = flags.DEFINE_string("output_json", None, "Write all records here as one JSON list.")
_OUT_JSONL = flags.DEFINE_string("output", None, "Write one JSON line per record here "
                                 "(flushed per record).")
_OURS = flags.DEFINE_list("ours", [], "benchmark.py JSONL files to compare our AR with.")
_RECORDS = flags.DEFINE_list("records", [], "Compare these earlier --output files with --ours "
                             "instead of running anything.")


def prompt_items(tokenizer) -> list[dict]:
  items = datasets.spec_bench_subset(_PER_CATEGORY.value) if _PER_CATEGORY.value else []
  for n in map(int, _LENGTHS.value):
    items.append(datasets.spec_bench_subset(1, ["writing"])[0]
                 if n < 300 else datasets.long_document_prompt(tokenizer, n))
  return items


def compare(records: list[dict], paths: list[str]):
  """Our AR decode tokens/s over HF's, per prompt and mode (Markdown)."""
  ours = {}
  for r in summarize.load(paths):
    if r["method"] == "ar":
      ours.setdefault(r["item_id"], r)  # the first file naming a prompt wins
  modes = list(dict.fromkeys(r["mode"] for r in records))
  print("\n| prompt | prompt tokens | ours AR | " + " | ".join(
      f"HF {m} | ours / HF {m}" for m in modes) + " |")
  print("|---|---|---|" + "---|---|" * len(modes))
  ratios = {m: [] for m in modes}
  for item_id in dict.fromkeys(r["item_id"] for r in records):
    u = ours.get(item_id)
    if u is None:
      continue
    cells = []
    for m in modes:
      h = next((r for r in records if r["item_id"] == item_id and r["mode"] == m), None)
      if h is None:
        cells += ["–", "–"]
        continue
      ratio = u["tokens_per_s"] / h["decode_tokens_per_s"]
      ratios[m].append(ratio)
      cells += [f"{h['decode_tokens_per_s']:.1f}", f"{ratio:.1f}x"]
    print(f"| {item_id} | {u['prompt_tokens']} | {u['tokens_per_s']:.1f} | "
          + " | ".join(cells) + " |")
  for m, rs in ratios.items():
    if rs:
      print(f"\nours / HF {m}: {min(rs):.1f}x - {max(rs):.1f}x, median "
            f"{statistics.median(rs):.1f}x over {len(rs)} prompts")


def main(argv):
  del argv
  if _RECORDS.value:
    compare(summarize.load(_RECORDS.value), _OURS.value)
    return
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer, StaticCache
  path = (packaged_models.resolve(_MODEL.value) if _MODEL.value
          else checkpoint.default_model_path())
  if not path.exists():
    raise app.UsageError(f"--model={_MODEL.value}: no such file or directory, nor a packaged "
                         f"model's name ({', '.join(packaged_models.MODELS)})")
  where = dict(pretrained_model_name_or_path=path) if path.is_dir() else dict(
      pretrained_model_name_or_path=path.parent, gguf_file=path.name)
  tok = AutoTokenizer.from_pretrained(**where)
  dtype = getattr(torch, _DTYPE.value)
  items = [(item, datasets.encode(tok, item)) for item in prompt_items(tok)]
  sync = torch.cuda.synchronize if _DEVICE.value == "cuda" else (lambda: None)
  sink = open(_OUT_JSONL.value, "w") if _OUT_JSONL.value else None
  results = []
  for mode in _MODES.value:
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype).to(_DEVICE.value).eval()
    cache = None
    if mode == "compiled":
      longest = max(len(ids) for _, ids in items) + _MAX_NEW.value
      cache = StaticCache(config=model.config, max_cache_len=-(-longest // 256) * 256)
      model.forward = torch.compile(model.forward, mode=_COMPILE_MODE.value, fullgraph=True)
    for item, ids in items:
      ids = torch.as_tensor(ids, dtype=torch.long, device=_DEVICE.value)[None]

      def timed(new):
        if cache is not None:
          cache.reset()
        sync()
        start = time.perf_counter()
        with torch.no_grad():
          out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False,
                               pad_token_id=tok.eos_token_id, past_key_values=cache)
        sync()
        return time.perf_counter() - start, out

      start = time.perf_counter()
      timed(_MAX_NEW.value)  # warm-up (compiles in compiled mode)
      timed(1)
      warm = time.perf_counter() - start
      full = statistics.median(timed(_MAX_NEW.value)[0] for _ in range(_REPEATS.value))
      first = statistics.median(timed(1)[0] for _ in range(_REPEATS.value))
      tps = (_MAX_NEW.value - 1) / (full - first)
      rec = dict(item_id=item["id"], mode=mode, prompt_tokens=ids.shape[1],
                 max_new_tokens=_MAX_NEW.value, decode_tokens_per_s=tps,
                 e2e_tokens_per_s=_MAX_NEW.value / full, warmup_s=warm, dtype=_DTYPE.value,
                 compile_mode=_COMPILE_MODE.value if mode == "compiled" else None,
                 device=(torch.cuda.get_device_name() if _DEVICE.value == "cuda" else "cpu"),
                 date=time.strftime("%F"),
                 transformers=__import__("transformers").__version__, torch=torch.__version__)
      results.append(rec)
      print(json.dumps(rec), flush=True)
      if sink:
        sink.write(json.dumps(rec) + "\n")
        sink.flush()
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=1))
  if _OURS.value:
    compare(results, _OURS.value)


if __name__ == "__main__":
  app.run(main)
