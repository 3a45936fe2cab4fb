"""Checkpoint loading: weights against independent readers, the params cache, the SmolLM2
tokenizer conventions, and clear errors for files that cannot be loaded."""

from __future__ import annotations

import json
import shutil
import warnings

import jax
import numpy as np
import pytest
import torch

from knapspec_jax import api, checkpoint
from knapspec_jax.checkpoint import CheckpointError
from knapspec_jax.config import UnsupportedModelError


def _hf_state(hf_model) -> dict[str, np.ndarray]:
  return {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}


def _assert_params_match_hf(params, cfg, state):
  """Every param of the model.py layout equals the transformers tensor it stands for."""
  assert set(params) == {"embed", "final_norm", "layers"} | (
      set() if cfg.tie_embeddings else {"lm_head"})
  np.testing.assert_array_equal(params["embed"], state["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["final_norm"], state["model.norm.weight"])
  if not cfg.tie_embeddings:
    np.testing.assert_array_equal(params["lm_head"], state["lm_head.weight"].T)
  names = {"attn_norm": "input_layernorm.weight", "mlp_norm": "post_attention_layernorm.weight",
           "wq": "self_attn.q_proj.weight", "wk": "self_attn.k_proj.weight",
           "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
           "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
           "w_down": "mlp.down_proj.weight", "bq": "self_attn.q_proj.bias",
           "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
           "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight"}
  fused = {"wqkv": ("wq", "wk", "wv"), "bqkv": ("bq", "bk", "bv"), "w_gate_up": ("w_gate", "w_up")}
  assert len(params["layers"]) == cfg.n_layers
  for i, lp in enumerate(params["layers"]):
    ref = {k: state[f"model.layers.{i}.{v}"] for k, v in names.items()
           if f"model.layers.{i}.{v}" in state}
    ref = {k: v.T if v.ndim == 2 else v for k, v in ref.items()}
    for f, parts in fused.items():  # load_model(fuse=True) concatenates along the output axis
      if f in lp:
        ref[f] = np.concatenate([ref.pop(k) for k in parts], axis=-1)
    assert set(lp) == set(ref), f"layer {i}"
    for k, v in lp.items():
      np.testing.assert_array_equal(np.asarray(v), ref[k], err_msg=f"layer {i} {k}")


# --------------------------------------------------------------------------------- weights

def test_gguf_weights_equal_transformers_dequantization(smol_jax, smol_hf):
  """The GGUF path (dequantize, undo llama.cpp's Q/K row permutation) gives exactly the
  tensors transformers' own GGUF reader gives."""
  params = jax.tree.map(np.asarray, smol_jax.params)
  _assert_params_match_hf(params, smol_jax.cfg, _hf_state(smol_hf))
  cfg = smol_jax.cfg
  assert (cfg.arch, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
      "llama", 30, 576, 9, 3, 49152)
  assert cfg.tie_embeddings and cfg.max_seq_len == 8192 and cfg.rope_theta == 100000.0


def test_hf_directory_weights_equal_transformers(tiny):
  state = _hf_state(tiny.hf)
  ckpt = checkpoint.load_checkpoint(tiny.path, use_cache=False)  # the loader's own layout
  assert all(isinstance(a, np.ndarray) and a.dtype == np.float32
             for a in jax.tree.leaves(ckpt.params))
  _assert_params_match_hf(ckpt.params, ckpt.cfg, state)
  _assert_params_match_hf(jax.tree.map(np.asarray, tiny.jax.params), tiny.jax.cfg, state)


def test_split_checkpoint_reads_each_tensor_from_the_file_its_index_names(tmp_path,
                                                                          tiny_builder):
  """A checkpoint saved in several files with model.safetensors.index.json (transformers'
  max_shard_size) loads every tensor as transformers has it; a stray *.safetensors file that
  the index does not name is not read."""
  hf = tiny_builder("qwen2", seed=5)
  model_dir = tmp_path / "split"
  hf.save_pretrained(model_dir, safe_serialization=True, max_shard_size="100KB")
  index = json.loads((model_dir / checkpoint.HF_INDEX).read_text())["weight_map"]
  assert len(set(index.values())) >= 2
  (model_dir / "stray.safetensors").write_bytes(b"not safetensors at all")
  ckpt = checkpoint.load_checkpoint(model_dir, use_cache=False)
  _assert_params_match_hf(ckpt.params, ckpt.cfg, _hf_state(hf))


def test_index_naming_a_missing_file_is_refused(tmp_path, tiny_builder):
  hf = tiny_builder("llama", seed=6)
  model_dir = tmp_path / "split"
  hf.save_pretrained(model_dir, safe_serialization=True, max_shard_size="100KB")
  index = json.loads((model_dir / checkpoint.HF_INDEX).read_text())["weight_map"]
  name, file = sorted(index.items())[-1]
  (model_dir / file).unlink()
  with pytest.raises(CheckpointError, match=rf"tensor '[^']+' is in {file}, which is missing"):
    api.load_model(str(model_dir), use_cache=False)
  (model_dir / checkpoint.HF_INDEX).write_text("{}")
  with pytest.raises(CheckpointError, match=r"not a safetensors index"):
    api.load_model(str(model_dir), use_cache=False)


def test_bfloat16_safetensors_load_as_their_float32_values(tmp_path, tiny_builder):
  """Weights stored in bfloat16 (as most released checkpoints are) load as exactly the float32
  values of transformers' bfloat16 tensors."""
  hf = tiny_builder("qwen3", seed=7).to(torch.bfloat16)
  model_dir = tmp_path / "bf16"
  hf.save_pretrained(model_dir, safe_serialization=True)
  ckpt = checkpoint.load_checkpoint(model_dir, use_cache=False)
  assert all(a.dtype == np.float32 for a in jax.tree.leaves(ckpt.params))
  _assert_params_match_hf(ckpt.params, ckpt.cfg, _hf_state(hf))


# ------------------------------------------------------------------------------ params cache

def test_params_cache_restores_identical_params(tmp_path, monkeypatch, tiny_builder):
  hf = tiny_builder("qwen2", seed=11)
  model_dir = tmp_path / "model"
  hf.save_pretrained(model_dir, safe_serialization=True)
  cache = tmp_path / "cache"
  monkeypatch.setenv("KNAPSPEC_CACHE", str(cache))
  assert checkpoint.cache_dir() == cache

  first = checkpoint.load_checkpoint(model_dir)
  entries = sorted(p for p in cache.iterdir() if p.name.startswith("model-"))
  assert len(entries) == 1, f"expected one cache entry, found {sorted(cache.iterdir())}"
  assert (entries[0] / "complete").is_file() and len(list(entries[0].glob("*.npy"))) == len(
      jax.tree.leaves(first.params))

  def no_conversion(*args, **kwargs):
    raise AssertionError("the second load converted the safetensors instead of using the cache")

  monkeypatch.setattr(checkpoint, "hf_params", no_conversion)
  second = checkpoint.load_checkpoint(model_dir)
  assert second.cfg == first.cfg
  assert jax.tree.structure(second.params) == jax.tree.structure(first.params)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
    assert isinstance(b, np.ndarray) and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  _assert_params_match_hf(second.params, second.cfg, _hf_state(hf))
  assert sorted(p for p in cache.iterdir() if p.name.startswith("model-")) == entries

  # Changed weights change the fingerprint: a stale cache entry is never served.
  monkeypatch.undo()
  monkeypatch.setenv("KNAPSPEC_CACHE", str(cache))
  hf2 = tiny_builder("qwen2", seed=12)
  hf2.save_pretrained(model_dir, safe_serialization=True)
  third = checkpoint.load_checkpoint(model_dir)
  _assert_params_match_hf(third.params, third.cfg, _hf_state(hf2))


def test_params_cache_rebuilds_interrupted_and_damaged_entries(tmp_path, monkeypatch,
                                                               tiny_builder):
  hf = tiny_builder("llama", seed=13)
  model_dir = tmp_path / "model"
  hf.save_pretrained(model_dir, safe_serialization=True)
  monkeypatch.setenv("KNAPSPEC_CACHE", str(tmp_path / "cache"))
  checkpoint.load_checkpoint(model_dir)
  [entry] = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("model-")]
  (entry / "complete").unlink()  # as if the write had stopped half-way
  (entry / "embed.npy").write_bytes(b"not an array")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # an incomplete entry is rebuilt without being read
    second = checkpoint.load_checkpoint(model_dir)
  _assert_params_match_hf(second.params, second.cfg, _hf_state(hf))
  assert (entry / "complete").is_file()
  (entry / "embed.npy").write_bytes(b"not an array")  # damaged after completion
  with pytest.warns(UserWarning, match="ignoring unreadable params cache"):
    third = checkpoint.load_checkpoint(model_dir)
  _assert_params_match_hf(third.params, third.cfg, _hf_state(hf))


# ------------------------------------------------------------------------ tokenizer (SmolLM2)

@pytest.fixture(scope="module")
def smol_gguf_fields(smol_path) -> dict:
  """The GGUF's tokenizer metadata, read with `gguf` directly."""
  import gguf
  fields = gguf.GGUFReader(str(smol_path)).fields
  return {k: fields[k].contents() for k in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
                                            "tokenizer.ggml.add_bos_token")}


def _render_chat_template(template: str, messages) -> str:
  """A chat template rendered with jinja2 directly (not transformers)."""
  import jinja2
  return jinja2.Environment().from_string(template).render(messages=messages,
                                                           add_generation_prompt=True)


def test_smollm2_chat_template_ids(smol_jax, smol_gguf_fields):
  tok = smol_jax.tokenizer
  assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  message = "Write a haiku about the sea."
  ids = api.encode_prompt(smol_jax, message)
  assert ids.dtype == np.int32 and ids.ndim == 1
  assert ids[0] == 1, "the chat template starts with <|im_start|>"
  assert ids[1] != 1 and 0 not in ids, "no extra BOS: neither a doubled <|im_start|> nor <|endoftext|>"
  assert list(ids).count(1) == 3 and list(ids).count(2) == 2  # system, user, assistant turns

  text = _render_chat_template(smol_gguf_fields["tokenizer.chat_template"],
                               [{"role": "user", "content": message}])
  assert text.startswith("<|im_start|>system\n")
  assert text.endswith(f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n")
  assert tok.decode(ids.tolist()) == text
  assert ids.tolist() == tok.encode(text, add_special_tokens=False)

  raw = api.encode_prompt(smol_jax, message, raw=True)
  assert raw[0] not in (0, 1) and tok.decode(raw.tolist()) == message, "raw text gets no BOS"


def test_smollm2_eos_is_im_end(smol_jax, smol_gguf_fields):
  assert smol_jax.eos_ids == (2,)
  assert smol_jax.tokenizer.convert_ids_to_tokens(list(smol_jax.eos_ids)) == ["<|im_end|>"]
  assert smol_gguf_fields["tokenizer.ggml.eos_token_id"] == 2
  assert smol_gguf_fields["tokenizer.ggml.add_bos_token"] is False


def test_config_and_tokenizer_without_the_weights(smol_path, tmp_path, monkeypatch):
  """read_config_and_tokenizer (what a script that only needs tokens asks for): the config
  transformers reads from the same GGUF, the file's EOS, load_checkpoint's errors for a path that
  is not there, and a tokenizer that is transformers' own (vocabulary, special tokens, chat
  template, encodings) whether read from the file (use_cache=False) or from the header cache,
  whose read never parses the file; a damaged cache entry warns and is rebuilt."""
  import gguf
  from transformers import AutoConfig, AutoTokenizer
  monkeypatch.setenv("KNAPSPEC_CACHE", str(tmp_path / "cache"))
  path, cfg, tokenizer, eos = checkpoint.read_config_and_tokenizer(smol_path, use_cache=False)
  assert path == smol_path and eos == (2,)
  assert not (tmp_path / "cache").exists()  # use_cache=False writes nothing
  hf = AutoConfig.from_pretrained(smol_path.parent, gguf_file=smol_path.name)
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
      hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads,
      hf.vocab_size)
  with pytest.raises(CheckpointError, match=r"no such file or directory"):
    checkpoint.read_config_and_tokenizer(tmp_path / "nowhere.gguf")

  checkpoint.read_config_and_tokenizer(smol_path)  # writes the header cache's entry
  [entry] = (tmp_path / "cache").iterdir()
  assert entry.name.endswith("-header") and (entry / "complete").is_file()
  with monkeypatch.context() as m:
    m.setattr(gguf, "GGUFReader", lambda *a: pytest.fail("the cached read parsed the GGUF file"))
    _, cached_cfg, cached, cached_eos = checkpoint.read_config_and_tokenizer(smol_path)
  assert cached_cfg == cfg and cached_eos == eos
  reference = AutoTokenizer.from_pretrained(smol_path.parent, gguf_file=smol_path.name)
  chat = [{"role": "user", "content": "Sort a list in Python."}]
  for tok in (tokenizer, cached):
    assert tok.get_vocab() == reference.get_vocab()
    assert tok.special_tokens_map == reference.special_tokens_map
    assert tok.chat_template == reference.chat_template
    assert (tok.apply_chat_template(chat, add_generation_prompt=True)
            == reference.apply_chat_template(chat, add_generation_prompt=True))
    for text in ("def knapsack(items, budget):\n    return max(items)  # ünïcode",
                 "<|im_start|>user\nhi<|im_end|>", "  spaces\t\ttabs 😀 日本語"):
      assert tok.encode(text) == reference.encode(text)
      assert tok.decode(reference.encode(text)) == reference.decode(reference.encode(text))

  (entry / "header.json").write_text("{")  # damaged after completion
  with pytest.warns(UserWarning, match="ignoring unreadable header cache"):
    _, again, _, _ = checkpoint.read_config_and_tokenizer(smol_path)
  assert again == cfg and (entry / "complete").is_file()
  assert json.loads((entry / "header.json").read_text())["eos_ids"] == [2]


def test_a_first_load_reads_the_gguf_header_once(smol_path, smol_jax, tmp_path, monkeypatch):
  """A first load parses the GGUF file's metadata once for the config, the tokenizer and the
  weights (a reader's construction parses the whole vocabulary: it used to happen twice), and
  a cached load not at all; both give the weights of the uncached fixture."""
  import gguf
  monkeypatch.setenv("KNAPSPEC_CACHE", str(tmp_path / "cache"))
  readers = []
  reader = gguf.GGUFReader
  monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: readers.append(a) or reader(*a, **k))
  for want in (1, 0):
    readers.clear()
    ckpt = checkpoint.load_checkpoint(smol_path)
    assert len(readers) == want
    assert ckpt.cfg == smol_jax.cfg and ckpt.eos_ids == smol_jax.eos_ids
    for name in ("embed", "final_norm"):
      np.testing.assert_array_equal(ckpt.params[name], np.asarray(smol_jax.params[name]))


# ------------------------------------------------------------------------------- bad inputs

def test_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match=r"no such file or directory"):
    api.load_model(str(tmp_path / "nowhere.gguf"))
  with pytest.raises(CheckpointError, match=r"llama-99b: no such file or directory, nor a "
                     r"packaged model's name \(.*qwen2.5-coder-1.5b"):
    api.load_model("llama-99b")
  with pytest.raises(CheckpointError, match=r"no such file or directory"):
    checkpoint.load_checkpoint(tmp_path / "no_dir")


def test_file_that_is_not_gguf(tmp_path):
  path = tmp_path / "random.gguf"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(CheckpointError, match=r"not a GGUF file"):
    api.load_model(str(path), use_cache=False)
  empty = tmp_path / "empty.gguf"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointError, match=r"not a GGUF file"):
    api.load_model(str(empty), use_cache=False)


@pytest.mark.parametrize("n_bytes", [4 << 20, 64 << 10], ids=["in_tensor_data", "in_metadata"])
def test_truncated_gguf(tmp_path, smol_path, n_bytes):
  path = tmp_path / "truncated.gguf"
  with open(smol_path, "rb") as f:
    path.write_bytes(f.read(n_bytes))
  with pytest.raises(CheckpointError, match=r"corrupt or truncated GGUF"):
    api.load_model(str(path), use_cache=False)


def test_unsupported_architecture(tmp_path):
  import transformers
  cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                bos_token_id=0, eos_token_id=0)
  transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path, safe_serialization=True)
  assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"
  with pytest.raises(UnsupportedModelError, match=r"model_type 'gpt2'.*not supported"):
    api.load_model(str(tmp_path), use_cache=False)


def test_unsupported_sliding_window(tiny_models, tmp_path):
  model_dir = tmp_path / "qwen2_swa"
  shutil.copytree(tiny_models["qwen2"].path, model_dir)
  config = json.loads((model_dir / "config.json").read_text())
  config.update(use_sliding_window=True, sliding_window=64)
  (model_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(UnsupportedModelError, match=r"sliding-window"):
    api.load_model(str(model_dir), use_cache=False)


def test_hf_directory_without_config(tiny_models, tmp_path):
  shutil.copy(tiny_models["llama"].path / "model.safetensors", tmp_path)
  with pytest.raises(CheckpointError, match=r"needs a config\.json"):
    api.load_model(str(tmp_path), use_cache=False)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match=r"not valid JSON"):
    api.load_model(str(tmp_path), use_cache=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(tiny_models, tmp_path, damage):
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_models["llama"].path, model_dir)
  weights = model_dir / "model.safetensors"
  data = weights.read_bytes()
  if damage == "garbage":
    weights.write_bytes(np.random.default_rng(1).bytes(len(data)))
  else:
    weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=r"corrupt safetensors file"):
    api.load_model(str(model_dir), use_cache=False)


def test_hf_directory_with_missing_tensor(tiny_models, tmp_path):
  from safetensors.numpy import load_file, save_file
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_models["llama"].path, model_dir)
  tensors = load_file(model_dir / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
    api.load_model(str(model_dir), use_cache=False)
