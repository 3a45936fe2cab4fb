"""Static model configuration: frozen, hashable, safe to pass as a jit static argument."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
ATTENTION_IMPLS = ("xla", "pallas", "cudnn")
WINDOW_ATTENTION_IMPLS = ("xla", "pallas")
DRAFT_SKIP_MODES = ("static", "runtime")


def check_decode_options(attention: str, window_attention: str, draft_skip: str,
                         draft_vocab: int = 0, segment_graphs: bool = False):
  """Raises UnsupportedModelError unless these ModelConfig options (see its docstring) name
  implementations that exist and fit together; ModelConfig checks them, and load_model before it
  loads any weight."""
  if attention not in ATTENTION_IMPLS:
    raise UnsupportedModelError(f"attention must be one of {ATTENTION_IMPLS}, got {attention!r}")
  if window_attention not in WINDOW_ATTENTION_IMPLS:
    raise UnsupportedModelError(f"window_attention must be one of {WINDOW_ATTENTION_IMPLS}, got "
                                f"{window_attention!r}")
  if window_attention == "pallas" and attention != "pallas":
    raise UnsupportedModelError(f"window_attention='pallas' needs attention='pallas' (the same "
                                f"kernel serves one-token steps), got {attention!r}")
  if draft_skip not in DRAFT_SKIP_MODES:
    raise UnsupportedModelError(f"draft_skip must be one of {DRAFT_SKIP_MODES}, got "
                                f"{draft_skip!r}")
  if not is_int(draft_vocab) or draft_vocab < 0:
    raise UnsupportedModelError(f"draft_vocab must be an integer >= 0, got {draft_vocab!r}")
  if not isinstance(segment_graphs, (bool, np.bool_)):
    raise UnsupportedModelError(f"segment_graphs must be True or False, got {segment_graphs!r}")
  if draft_vocab and draft_skip != "static":
    raise UnsupportedModelError("draft_vocab works with static skip sets only (draft_skip="
                                f"'static'), got draft_skip={draft_skip!r}")


def is_int(x) -> bool:
  """An integer, Python's or numpy's; bools are not (the check of every integer option)."""
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
  """A real number, Python's or numpy's; bools and strings are not."""
  return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
      x, (bool, np.bool_))


class UnsupportedModelError(ValueError):
  """The checkpoint describes an architecture or feature this project does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Llama-family decoder.

  Attributes:
    arch: "llama" (SmolLM2, Llama 3.x), "qwen2" (q/k/v bias) or "qwen3" (q/k RMSNorm).
    vocab_size: rows of the embedding table.
    d_model: width of the residual stream.
    d_ff: hidden width of the SwiGLU MLP.
    n_layers: number of decoder layers L (2L skippable sublayers).
    n_heads: query heads.
    n_kv_heads: key/value heads (grouped-query attention when < n_heads).
    head_dim: width of one head.
    rope_theta: RoPE base.
    rope_scaling: RoPE scaling parameters as sorted (key, value) pairs, () for plain RoPE.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: LM head shares the embedding matrix.
    max_seq_len: the model's context length; the KV cache holds this many positions.
    qkv_bias: q/k/v projections carry a bias (Qwen2).
    qk_norm: RMSNorm over each query/key head before RoPE (Qwen3).
    attention: how a one-token (decode or draft) step computes attention: "xla" (einsum, mask,
      softmax, einsum over the cache sliced to a length bucket: any backend and dtype),
      "pallas" (decode_attention.py: a deterministic split-KV kernel over the whole cache; on
      a GPU through Triton, the default there in bfloat16; elsewhere in Pallas's interpreter,
      which is slow: tests only) or "cudnn" (one fused cuDNN kernel; GPU with bfloat16 only;
      not deterministic). Not a property of the checkpoint: a load_model option.
    window_attention: how forwards of 2 to 16 tokens (verify windows) compute attention: "xla"
      (as above), or with attention="pallas" "pallas" (the same kernel with one row per query
      position and head, reading each key block once for the whole window). "xla" here;
      load_model gives windows the kernel wherever one-token steps use it
      (api.default_window_attention: 1.00-1.17x a step on the H200, against 1.08-1.54x through
      XLA; BENCHMARKS.md 10.13). Longer forwards (prefill chunks) always use "xla".
    matmul_rows: projections of fewer rows than this run padded with zero rows to this many
      (model.linear). On the H200, XLA lowers a one-row bfloat16 projection to a slower kernel
      than a two-row one: a Qwen2.5-1.5B-shaped one-token step took 2.24 ms, a two-token
      forward 1.64 ms (BENCHMARKS.md 10.5). 1: no padding. A load_model option, like attention.
    step_rows: positions a one-token step's forward runs over (model.step: AR's steps, the
      drafts' steps): the token in row 0, padding after it, whose keys and values land past the
      new cursor and are overwritten by the next forward. On the H200 with the Pallas kernel for
      both steps and windows, a two-row forward costs 0.7-3.5% less than the one-row step with
      its projections padded (Qwen2.5-Coder-1.5B's real weights, 256-28K positions; BENCHMARKS.md
      10.30); through XLA's window attention it costs 7-28% more (10.29). 1 here; load_model
      picks api.default_step_rows. In bfloat16 the width of a forward changes its rounding, so
      AR's output moves with this setting (as with the "ar" method's width option). 1..4.
    draft_skip: how a draft leaves out its skipped sublayers. "static": they are absent from
      the compiled program (one program per skip set; a new set costs a compile, seconds on the
      H200, below). "runtime": every sublayer runs under a `lax.cond` on the skip
      set, which the decode state carries as data (DecodeState.skip), so one program per draft
      length and bucket serves every skip set and switching costs no compile; each cond costs
      something per step instead (on the H100, SmolLM2 shape, an earlier version of this: 2.56
      ms against 1.47 with nothing skipped; ../shared/MEASURED.md; this version on the H200,
      Qwen2.5-1.5B shape: 2.2-3.1 ms a draft step against 0.9-1.6 ms static, a switch 0.001 s
      against a 4.9-11.1 s compile, BENCHMARKS.md 10.13; 7.8-14.2 s in session 18, 10.22). A
      third way was measured and is not an option: a draft step driven from the host, one
      compiled call per kept sublayer or layer (experiments/gpu/switch_cost.py --modes=dispatch).
      Switching is free there too, but the host sets the pace: 79-114 us per call, 2.2-3.4 ms
      a draft step (10.22). A load_model option.
    draft_vocab: 0, or the size of the vocabulary a draft's LM head scores (the draft's
      argmax over K rows instead of all V; the verify keeps the full head, so the output is
      unchanged). Its rows are chosen per generation (decoding.draft_vocabulary: the model's end
      tokens, the prompt's tokens, then the lowest ids) and travel in the decode state. On
      Qwen2.5-Coder-1.5B the tied head is 467 MB of a draft step's ~2.5 GB at 16K; on the
      documents 96-99.8% of AR's output tokens lie in the prompt's tokens and the first 16384 ids
      (BENCHMARKS.md 10.32). Greedy decoding only; static skip sets; one device. A load_model
      option, off by default (it refuses sampling and tensor parallelism); on the H200 a draft
      step costs 0.07-0.09 ms less with 16384, and KnapSpec ran 2.1-4.7% faster on the
      documents (10.33).
    segment_graphs: compile the speculation segment program (speculative.SpecSegmentStatics)
      with XLA's command buffers (CUDA graphs) taking in while loops and conditionals
      (speculative.SEGMENT_GRAPH_OPTIONS): a round's draft loop, its confidence exit and the
      acceptance then run inside the segment's graphs instead of going back to the host for
      each loop predicate. GPU compiles only (elsewhere the option is left out); AR's programs
      and the latency profile's keep XLA's defaults, because with these command buffers for the
      whole process (XLA_FLAGS) the draft and verify loops timed alone ran 1.2-2.2x slower while
      the segments ran 1-3% faster (BENCHMARKS.md 10.8, Qwen2.5-1.5B shape, session 7's engine).
      Outputs are unchanged. load_model turns it on on one GPU (api.default_segment_graphs) since
      session 41: on an H100, Qwen2.5-Coder-1.5B's documents with the default bucket windows
      drafted 1.3-2.0% faster with it, the same drafts and texts (BENCHMARKS.md 10.45); a
      config built by hand keeps False.
    tall_tile_stages: Triton's software-pipelining depth (key and value blocks in flight) of
      the split-KV Pallas kernel for a query tile taller than one query's 16 rows: verify
      windows (decode_attention.decode_attention's tall_stages), lowered where the tile's blocks
      would not fit the program's shared memory (decode_attention.fit_stages: float32 windows).
      One-query tiles keep decode_attention.STAGES (2). The arithmetic is the same whatever the
      depth; only the kernel's speed moves. 3 (decode_attention.TALL_STAGES) since session 32:
      on the H200 (experiments/gpu/step_width.py --tall_tile_stages=2,3, random bf16 weights,
      BENCHMARKS.md 10.36) the verify of 11 at 16K cost 1.035x / 1.059x a one-token step on the
      Llama-3.1-8B / Qwen3-8B shapes against 1.093x / 1.118x at 2, and every verify timed on the
      Qwen2.5-1.5B shape ran 0.5-1.6% faster. 1..8.
  """

  arch: str
  vocab_size: int
  d_model: int
  d_ff: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] = ()
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  max_seq_len: int = 8192
  qkv_bias: bool = False
  qk_norm: bool = False
  attention: str = "xla"
  matmul_rows: int = 1
  window_attention: str = "xla"
  step_rows: int = 1
  draft_skip: str = "static"
  draft_vocab: int = 0
  segment_graphs: bool = False
  tall_tile_stages: int = 3

  def __post_init__(self):
    if not is_int(self.tall_tile_stages) or not 1 <= self.tall_tile_stages <= 8:
      raise UnsupportedModelError(f"tall_tile_stages must be an integer in 1..8, got "
                                  f"{self.tall_tile_stages!r}")
    if not is_int(self.matmul_rows) or not 1 <= self.matmul_rows <= 16:
      raise UnsupportedModelError(f"matmul_rows must be an integer in 1..16, got "
                                  f"{self.matmul_rows!r}")
    if not is_int(self.step_rows) or not 1 <= self.step_rows <= 4:
      # A draft step's padding rows land past the verify window (speculative.round_span); up to
      # 4 they fit the cache's slack at the longest draft (kv_cache.SLACK), with the cursor at
      # the context's last position.
      raise UnsupportedModelError(f"step_rows must be an integer in 1..4, got "
                                  f"{self.step_rows!r}")
    check_decode_options(self.attention, self.window_attention, self.draft_skip,
                         self.draft_vocab, self.segment_graphs)
    if self.draft_vocab >= self.vocab_size:
      raise UnsupportedModelError(f"draft_vocab must be 0 (the whole vocabulary) or a size below "
                                  f"the vocabulary's {self.vocab_size}, got {self.draft_vocab!r}")
    if self.arch not in SUPPORTED_ARCHITECTURES:
      raise UnsupportedModelError(
          f"architecture {self.arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
    if self.n_heads % self.n_kv_heads:
      raise UnsupportedModelError(
          f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise UnsupportedModelError(f"RoPE needs an even head_dim, got {self.head_dim}")

  @property
  def n_sublayers(self) -> int:
    return 2 * self.n_layers

  @property
  def rope_type(self) -> str:
    return dict(self.rope_scaling).get("rope_type", "default")

  def rope_inv_freq(self) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim // 2], float64, with the model's scaling applied."""
    dim = self.head_dim
    inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    params = dict(self.rope_scaling)
    kind = self.rope_type
    if kind == "default":
      return inv_freq
    if kind == "linear":
      return inv_freq / float(params["factor"])
    if kind == "llama3":
      factor = float(params["factor"])
      low = float(params["low_freq_factor"])
      high = float(params["high_freq_factor"])
      old_ctx = float(params["original_max_position_embeddings"])
      low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
      wavelen = 2 * np.pi / inv_freq
      scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
      smooth = (old_ctx / wavelen - low) / (high - low)
      smoothed = (1 - smooth) * scaled / factor + smooth * scaled
      medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
      return np.where(medium, smoothed, scaled)
    raise UnsupportedModelError(f"RoPE scaling type {kind!r} is not supported "
                                "(supported: default, linear, llama3)")

  @classmethod
  def from_hf(cls, hf_config) -> "ModelConfig":
    """Builds the config from a `transformers` config object (LlamaConfig, Qwen2Config,
    Qwen3Config)."""
    model_type = getattr(hf_config, "model_type", None)
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}.get(model_type)
    if arch is None:
      raise UnsupportedModelError(
          f"model_type {model_type!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
    n_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    legacy_scaling = getattr(hf_config, "rope_scaling", None)
    if legacy_scaling and not rope:
      rope = dict(legacy_scaling)
    theta = float(rope.pop("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
    if "type" in rope and "rope_type" not in rope:
      rope["rope_type"] = rope.pop("type")
    rope.pop("type", None)
    if rope.get("rope_type", "default") == "default":
      rope = {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise UnsupportedModelError("partial rotary embeddings are not supported")
    if arch in ("qwen2", "qwen3") and getattr(hf_config, "use_sliding_window", False):
      raise UnsupportedModelError("sliding-window attention is not supported")
    qkv_bias = arch == "qwen2" or bool(getattr(hf_config, "attention_bias", False))
    return cls(
        arch=arch,
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        d_ff=hf_config.intermediate_size,
        n_layers=hf_config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        rope_theta=theta,
        rope_scaling=tuple(sorted((k, v) for k, v in rope.items() if v is not None)),
        norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        max_seq_len=int(hf_config.max_position_embeddings),
        qkv_bias=qkv_bias,
        qk_norm=arch == "qwen3",
    )
