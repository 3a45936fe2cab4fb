"""Times the official PyTorch KnapSpec (github.com/kaist-flexml-lab/knapspec) on SmolLM2, for the
comparison in BENCHMARKS.md. The official code is not part of this repository: pass a checkout
of it with --official_dir (on the device machine it is carried as a git-ignored folder).

  python experiments/gpu/run_official.py --official_dir=/root/official \
      --prompts=.data/official_prompts.json --strategies=autoregressive,knapspec

Mirrors the official benchmark.py: float16, its profile_model() coefficients, gamma 10,
skip budget 8, optimize interval 64, greedy; wall time per generate() call (prefill included, as
the official script measures it), and decode-only tokens/s from a separate prefill timing.
Prints one JSON line per (strategy, prompt).
"""

import argparse
import json
import os
import pathlib
import sys
import time


def _legacy_cache_shim(transformers):
  """The official code targets transformers 4.57, whose DynamicCache converts to and from tuples
  of (keys, values) per layer; 5.x dropped those two methods. Restore them (only if missing)."""
  cls = transformers.cache_utils.DynamicCache
  if not hasattr(cls, "from_legacy_cache"):
    def from_legacy_cache(past):
      cache = cls()
      for i, (k, v) in enumerate(past or ()):
        cache.update(k, v, i)
      return cache
    cls.from_legacy_cache = staticmethod(from_legacy_cache)
  if not hasattr(cls, "to_legacy_cache"):
    cls.to_legacy_cache = lambda self: tuple((layer.keys, layer.values) for layer in self.layers)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--official_dir", required=True)
  ap.add_argument("--prompts", required=True)
  ap.add_argument("--model", default=os.environ.get("KNAPSPEC_MODEL", ""))
  ap.add_argument("--strategies", default="autoregressive,knapspec")
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--limit", type=int, default=0, help="first N prompts only (0 = all)")
  ap.add_argument("--output", default="")
  args = ap.parse_args()

  sys.path.insert(0, args.official_dir)
  import torch
  import transformers
  _legacy_cache_shim(transformers)
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from utils import Env  # the official code's
  from profile_modules import profile_model
  from self_speculation_strategy.autoregressive_generator import AutoregressiveGenerator
  from self_speculation_strategy.knapspec_generator import KnapspecGenerator
  from self_speculation_strategy.clasp_generator import ClaspGenerator
  from self_speculation_strategy.del_generator import DELGenerator

  path = pathlib.Path(args.model)
  print(f"torch {torch.__version__} transformers {transformers.__version__} "
        f"{torch.cuda.get_device_name()}", flush=True)
  tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  if tok.pad_token is None:
    tok.pad_token = tok.eos_token
  model = AutoModelForCausalLM.from_pretrained(
      path.parent, gguf_file=path.name, dtype=torch.float16).cuda().eval()
  env = Env(model=model, tok=tok, device="cuda", eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
  t0 = time.perf_counter()
  coefficients = profile_model(model)
  print(f"profile_model: {coefficients} in {time.perf_counter() - t0:.1f} s", flush=True)

  def make(name):
    if name == "autoregressive":
      return AutoregressiveGenerator(env, coefficients=coefficients)
    if name == "knapspec":
      return KnapspecGenerator(env, gamma=10, skip_budget_M=8, optimize_interval=64,
                               coefficients=coefficients, sim_threshold=0.5)
    if name == "clasp":
      return ClaspGenerator(env, gamma=10, skip_budget_M=8, optimize_interval=64,
                            coefficients=coefficients)
    if name == "del":
      return DELGenerator(env, gamma=10, skip_budget=8, optimize_interval=64,
                          coefficients=coefficients, temperature=0.0, top_k=50, top_p=1.0)
    raise ValueError(name)

  prompts = json.loads(pathlib.Path(args.prompts).read_text())
  if args.limit:
    prompts = prompts[:args.limit]
  out = open(args.output, "w") if args.output else None
  reference = {}
  for name in args.strategies.split(","):
    gen = make(name)
    # Warm-up (CUDA context, kernels, allocator) on the first prompt, untimed.
    with torch.no_grad():
      gen.generate(prompt=prompts[0]["text"], max_new_tokens=8, temperature=0.0, sample=False)
    for p in prompts:
      ids = tok(p["text"], return_tensors="pt")["input_ids"].cuda()
      torch.cuda.synchronize()
      t0 = time.perf_counter()
      with torch.no_grad():
        model(ids)  # the prompt's forward alone: what the decode-only figure subtracts
      torch.cuda.synchronize()
      prefill_s = time.perf_counter() - t0
      torch.cuda.synchronize()
      t0 = time.perf_counter()
      with torch.no_grad():
        res = gen.generate(prompt=p["text"], max_new_tokens=args.max_new_tokens,
                           temperature=0.0, top_k=50, top_p=1.0, sample=False,
                           reference_output_ids=reference.get(p["id"]))
      torch.cuda.synchronize()
      wall = time.perf_counter() - t0
      n = int(res.num_output_tokens)
      if name == "autoregressive":
        reference[p["id"]] = res.output_ids
      rec = {"impl": "official", "method": name, "id": p["id"], "prompt_tokens": ids.shape[1],
             "expected_prompt_tokens": p["n_tokens"], "new_tokens": n, "wall_s": wall,
             "prefill_s": prefill_s, "tokens_per_s_wall": n / wall,
             "tokens_per_s_decode": n / max(wall - prefill_s, 1e-9),
             "acceptance_rate": getattr(res, "acceptance_rate", None),
             "same_as_ar": (res.output_ids == reference.get(p["id"])) if res.output_ids else None}
      print(json.dumps(rec), flush=True)
      if out:
        out.write(json.dumps(rec) + "\n")
        out.flush()


if __name__ == "__main__":
  main()
