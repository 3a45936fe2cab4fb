"""A loaded model's runtime pieces, below the methods and above decoding: the `Model` (config,
device params, tokenizer, mesh, compiled programs, latency profile and what KnapSpec learned
about it: search times, predicted gains, kept drafts, measured AR speeds) and the warm-up
helpers every method compiles with (`abstract_state`, `warmup_prefill`). api.load_model builds
a Model; api.generate and the methods in methods.py run on it.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import jax
import jax.numpy as jnp

from knapspec_jax import decoding, sharding
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AR_SPEED_MIN_TOKENS = 32  # Model.note_ar_speed: shorter plain runs say too little


def _learned():
  """A Model field of what KnapSpec learns while decoding (a dict, empty at load)."""
  return dataclasses.field(default_factory=dict, metadata={"learned": True})


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
    windows and generations, until its windows measure slower than AR (methods.KeptDraft); the
    natural width's. width_kept_drafts: the same for each verify width W (`generate(width=W)`),
    apart, since a draft is judged against AR at its own width (Model.kept_drafts_at).
  ar_speeds: at each verify width (None: the natural one) and attention bucket, every plain
    decoding speed measured there, tokens/s (the "ar" method's generations and every method's
    plain windows of AR_SPEED_MIN_TOKENS or more, greedy); their median is what a kept draft's
    windows at that width must beat (Model.ar_speed). A width is its own key: AR at width 11
    runs 0.86-0.92x its natural speed (H100, BENCHMARKS.md 10.49, 10.51). The latency
    profile's prediction stands in where none was measured; it can be far off where the profile
    did not sample (Qwen2.5-1.5B at 28K positions on the H200: 348 tok/s predicted, 473
    measured; BENCHMARKS.md 10.8).
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
  # What KnapSpec learned about this model (LEARNED_FIELDS; Model.fresh forgets it):
  search_times: dict = _learned()  # attn bucket -> last search s
  search_gains: dict = _learned()  # attn bucket -> predicted saving
  kept_drafts: dict = _learned()  # attn bucket -> KeptDraft
  width_kept_drafts: dict = _learned()  # W -> {bucket -> KeptDraft}
  ar_speeds: dict = _learned()  # (width, bucket) -> [AR tok/s]

  @property
  def name(self) -> str:
    return self.source.rsplit("/", 1)[-1]

  def fresh(self, **changes) -> Model:
    """A copy that shares this model's weights, tokenizer and mesh, with `changes` applied, its
    own empty compile cache and nothing learned (every LEARNED_FIELDS entry empty, not shared):
    its compile counts and its decisions are its own, and a new learned field cannot be missed.
    dataclasses.replace alone would share the learned dicts, so the copy's decisions would leak
    into this model's."""
    forgotten = {name: {} for name in LEARNED_FIELDS}
    return dataclasses.replace(self, **{"compiled": CompileCache(), **forgotten, **changes})

  def kept_drafts_at(self, width: int | None) -> dict:
    """The drafts kept at a verify width (None: natural), bucket -> KeptDraft, for updating."""
    return self.kept_drafts if width is None else self.width_kept_drafts.setdefault(width, {})

  def note_ar_speed(self, context: int, capacity: int, tokens: int, seconds: float,
                    width: int | None = None):
    """Records a plain-decoding measurement of `tokens` from `context` at a verify width (None:
    natural; too short ones are ignored: a window's fixed host costs would make AR look slower
    than it is)."""
    if tokens >= AR_SPEED_MIN_TOKENS and seconds > 0:
      bucket = decoding.attn_bucket(context, capacity)
      self.ar_speeds.setdefault((width, bucket), []).append(tokens / seconds)

  def ar_speed(self, context: int, capacity: int, width: int | None = None) -> float | None:
    """The median AR tokens/s measured at context's bucket and this width (None: natural), else
    at the nearest bucket below (a bound from above: AR slows as the context grows); None when
    none was measured at this width.

    The median, not the fastest: a kept draft's one window is judged against it, and the fastest
    of several AR runs is biased upward by their noise. On the H200 (Qwen2.5-Coder-1.5B, 2K
    document, BENCHMARKS.md 10.17) a draft's 64-round window ran at 587 tok/s while the timed AR
    runs there measured 569-574, and it was dropped: an untimed AR run had been faster still."""
    bucket = decoding.attn_bucket(context, capacity)
    below = [b for w, b in self.ar_speeds if w == width and b <= bucket]
    return float(statistics.median(self.ar_speeds[width, max(below)])) if below else None

  @property
  def profile_name(self) -> str:
    """The key of this model's latency profile: its name, plus the one-token and window
    attention kernels when they are not XLA's, padded projection rows, steps wider than one
    row, run-time skip gating, the draft vocabulary, a kernel pipelining depth other than the
    default for verify tiles, and the tensor-parallel degree above 1 (a different kernel,
    gating or split is a different cost structure)."""
    name = self.name if self.cfg.attention == "xla" else f"{self.name}+{self.cfg.attention}"
    if self.cfg.matmul_rows > 1:
      name += f"+rows{self.cfg.matmul_rows}"
    if self.cfg.step_rows > 1:
      name += f"+step{self.cfg.step_rows}"
    if self.cfg.window_attention != "xla":
      name += f"+{self.cfg.window_attention}_windows"
    if self.cfg.draft_skip != "static":
      name += f"+{self.cfg.draft_skip}_skip"
    if self.cfg.draft_vocab:
      name += f"+draftvocab{self.cfg.draft_vocab}"
    if (self.cfg.attention == "pallas"
        and self.cfg.tall_tile_stages != ModelConfig.tall_tile_stages):
      name += f"+tallstages{self.cfg.tall_tile_stages}"
    tp = sharding.tp_size(self.mesh)
    return name if tp == 1 else f"{name}+tp{tp}"

  @property
  def cache_sharding(self):
    """Where each KV cache layer goes (sharding.cache_sharding; None on one device)."""
    return sharding.cache_sharding(self.cfg, self.mesh)


LEARNED_FIELDS = tuple(f.name for f in dataclasses.fields(Model) if f.metadata.get("learned"))


def abstract_state(model: Model) -> decoding.DecodeState:
  """A DecodeState of ShapeDtypeStructs laid out as api.generate builds it (the KV cache sharded
  as the model's): the arguments of a warm-up compile, without allocating a cache."""
  cache = KVCache.abstract(model.cfg, DTYPES[model.dtype], sharding=model.cache_sharding)
  logits = jax.ShapeDtypeStruct((model.cfg.vocab_size,), jnp.float32)
  draft = jax.eval_shape(lambda p: decoding.draft_vocabulary(p, model.cfg, (), ()),
                         model.params)  # None when drafts score every token
  state = jax.eval_shape(lambda c, l, d: decoding.init_state(c, l, 1, model.eos_ids, draft=d),
                         cache, logits, draft)
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
