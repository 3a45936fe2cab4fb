"""The outside reference: Hugging Face transformers `generate` on the same model and prompts.

  python experiments/bench_hf.py --long_lengths=100,4000,7500 --max_new_tokens=128 --device=cuda

Decode tokens/s = (N - 1) / (t(N new tokens) - t(1 new token)): prefill is excluded, as in
our own `tokens_per_s`. Two modes: eager (dynamic cache) and StaticCache + torch.compile.
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import checkpoint, datasets  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "GGUF file; default: the bundled SmolLM2.")
_LENGTHS = flags.DEFINE_list("long_lengths", ["100", "4000", "7500"],
                             "Prompt lengths; under 300 uses a Spec-Bench question.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Tokens generated per timed run.")
_DEVICE = flags.DEFINE_string("device", "cuda", "torch device.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "dtype.")
_MODES = flags.DEFINE_list("modes", ["eager", "compiled"], "eager and/or compiled.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; median kept.")
_COMPILE_MODE = flags.DEFINE_string(
    "compile_mode", "default", "torch.compile mode for --modes=compiled. 'reduce-overhead' "
    "(CUDA graphs) failed on the H100 with transformers 5.23 / torch 2.11: 'accessing tensor "
    "output of CUDAGraphs that has been overwritten by a subsequent run'.")
_OUT = flags.DEFINE_string("output_json", None, "Write the results here.")


def main(argv):
  del argv
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  path = pathlib.Path(_MODEL.value) if _MODEL.value else checkpoint.default_model_path()
  tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  dtype = getattr(torch, _DTYPE.value)
  results = []
  for mode in _MODES.value:
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=dtype).to(_DEVICE.value).eval()
    if mode == "compiled":
      model.generation_config.cache_implementation = "static"
      model.forward = torch.compile(model.forward, mode=_COMPILE_MODE.value, fullgraph=True)
    for n in _LENGTHS.value:
      n = int(n)
      item = (datasets.spec_bench_subset(1, ["writing"])[0] if n < 300
              else datasets.long_document_prompt(tok, n))
      ids = torch.tensor([datasets.encode(tok, item)], device=_DEVICE.value)

      def timed(new):
        torch.cuda.synchronize() if _DEVICE.value == "cuda" else None
        start = time.perf_counter()
        with torch.no_grad():
          out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               pad_token_id=tok.eos_token_id)
        torch.cuda.synchronize() if _DEVICE.value == "cuda" else None
        return time.perf_counter() - start, out

      start = time.perf_counter()
      timed(_MAX_NEW.value)  # warm-up (compiles in compiled mode)
      timed(1)
      warm = time.perf_counter() - start
      full = statistics.median(timed(_MAX_NEW.value)[0] for _ in range(_REPEATS.value))
      first = statistics.median(timed(1)[0] for _ in range(_REPEATS.value))
      tps = (_MAX_NEW.value - 1) / (full - first)
      rec = dict(mode=mode, prompt_tokens=ids.shape[1], max_new_tokens=_MAX_NEW.value,
                 decode_tokens_per_s=tps, e2e_tokens_per_s=_MAX_NEW.value / full,
                 warmup_s=warm, dtype=_DTYPE.value,
                 compile_mode=_COMPILE_MODE.value if mode == "compiled" else None, device=torch.cuda.get_device_name()
                 if _DEVICE.value == "cuda" else "cpu", transformers=__import__(
                     "transformers").__version__, torch=torch.__version__)
      results.append(rec)
      print(json.dumps(rec), flush=True)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  app.run(main)
