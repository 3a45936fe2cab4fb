"""Tensor parallelism (sharding.py) on 8 virtual CPU devices: under tp = 1 and 2 (Llama), 2 and
8 (Qwen2), 4 and 8 (Qwen3) every method's tokens equal AR's with the same model on one
device, which equal transformers' greedy ones; each weight and the KV cache sit split as the
heads, MLP and vocabulary dictate; a warmed-up generation compiles nothing; a mesh that cannot
split the model is refused clearly.

The multi-device runs happen in a subprocess (tests/sharding_worker.py) that asks for 8 CPU
devices before jax starts, so the rest of the suite keeps its usual single device. The models
are tiny random transformers models saved as split checkpoints (several safetensors files and
model.safetensors.index.json), so the index loader is exercised on the way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import build_random_hf

from knapspec_jax import sharding
from knapspec_jax.config import UnsupportedModelError

WORKER = pathlib.Path(__file__).with_name("sharding_worker.py")
# llama (2 KV heads): one device's mesh and a tp that splits its KV heads; for the others the
# tps that split their KV heads and one that cannot (qwen2, 4 KV heads, at 8) or splits them
# down to one per device (qwen3, 8). Llama's tp 8 (KV heads not split, as qwen2's at 8) left out in
# session 51: the test ran 38 s alone with it, 26 s without; tp 4 went in session 36 (25 s).
MODEL_TPS = {"llama": (1, 2), "qwen2": (2, 8), "qwen3": (4, 8)}
METHODS = ("ar", "knapspec", "fixed", "del", "clasp")
NEW = 12  # new tokens per generation: enough for several speculation rounds and rollbacks

# 8 query heads; KV heads 2, 4 and 8, so that KV heads are split where tp divides them (llama at
# tp 2, qwen2 up to 4, qwen3 always) and replicated where it does not.
_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_attention_heads=8,
               max_position_embeddings=512, num_hidden_layers=3)


def _hf_config(name: str):
  import transformers
  if name == "llama":
    return transformers.LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **_COMMON)
  if name == "qwen2":
    return transformers.Qwen2Config(num_key_value_heads=4, tie_word_embeddings=False,
                                    use_sliding_window=False, **_COMMON)
  return transformers.Qwen3Config(num_key_value_heads=8, head_dim=16, tie_word_embeddings=True,
                                  use_sliding_window=False, **_COMMON)


def _build(name: str, seed: int = 0):
  """A random transformers model whose every weight matters (conftest.build_random_hf), with
  head counts that 8 devices can split."""
  return build_random_hf(_hf_config(name), seed)


@pytest.fixture(scope="module")
def split_models(tmp_path_factory) -> dict:
  """name -> (HF checkpoint directory split over several files with an index, transformers
  model)."""
  models = {}
  for name in ("llama", "qwen2", "qwen3"):
    hf = _build(name)
    path = tmp_path_factory.mktemp(f"split_{name}")
    hf.save_pretrained(path, safe_serialization=True, max_shard_size="100KB")
    models[name] = (path, hf)
  return models


def _worker(mode: str, spec: dict, timeout: int = 300, env: dict | None = None) -> dict:
  out = subprocess.run([sys.executable, str(WORKER), mode, json.dumps(spec)], capture_output=True,
                       text=True, timeout=timeout, env=None if env is None else {**os.environ, **env})
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _expected_shards(cfg, tp: int) -> dict:
  """Per-device shapes, written from what each dimension means: query heads, MLP hidden units
  and vocabulary rows split tp ways; KV heads too when tp divides them; norms whole."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
  q = cfg.num_attention_heads * hd // tp
  kv_heads = cfg.num_key_value_heads
  kv = (kv_heads // tp if kv_heads % tp == 0 else kv_heads) * hd
  layer = {"attn_norm": [d], "mlp_norm": [d], "wq": [d, q], "wk": [d, kv], "wv": [d, kv],
           "wo": [q, d], "w_gate": [d, f // tp], "w_up": [d, f // tp], "w_down": [f // tp, d]}
  if cfg.model_type == "qwen2":
    layer.update(bq=[q], bk=[kv], bv=[kv])
  if cfg.model_type == "qwen3":
    layer.update(q_norm=[hd], k_norm=[hd])
  top = {"embed": [v // tp, d], "final_norm": [d]}
  if not cfg.tie_word_embeddings:
    top["lm_head"] = [d, v // tp]
  return {"layer": layer, "top": top, "cache_kv": kv // hd}


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3"])
def test_every_method_under_tp_equals_one_device(split_models, hf_greedy, name):
  path, hf = split_models[name]
  assert (path / "model.safetensors.index.json").is_file()
  assert len(list(path.glob("*.safetensors"))) >= 2
  prompt = np.random.default_rng(7).integers(0, hf.config.vocab_size, size=16).tolist()
  got = _worker("generate", dict(model=str(path), prompt=prompt, new=NEW,
                                 tps=list(MODEL_TPS[name]), methods=list(METHODS)))
  single = got["single"]["tokens"]  # AR on one device; every method's tokens there (float32)
  assert single == hf_greedy(hf, prompt, NEW)
  for tp in MODEL_TPS[name]:
    run = got[f"tp{tp}"]
    for m in METHODS:
      assert run["methods"][m]["tokens"] == single, (tp, m)
    for m in ("ar", "fixed"):  # every program known at warm-up: none compiled while decoding
      assert run["methods"][m]["compile_in_decode_s"] == 0.0, (tp, m)
      again = run[f"{m}_again"]
      assert again["tokens"] == single
      assert again["xla_compiles"] == 0, (tp, m, again)
    placed = run["placement"]
    want = _expected_shards(hf.config, tp)
    if tp == 1:  # one device keeps the fused layout, whole
      assert "wqkv" in placed["layer"] and placed["layer"]["wqkv"]["devices"] == 1
      continue
    assert {k: v["shape"] for k, v in placed["layer"].items()} == want["layer"], tp
    assert all(v["devices"] == tp for v in placed["layer"].values())
    assert {k: placed[k]["shape"] for k in want["top"]} == want["top"], tp
    assert placed["cache"]["shape"][2] == want["cache_kv"] and placed["cache"]["devices"] == tp


def test_first_speculative_use_under_tp_measures_the_split_models_profile(split_models, tmp_path):
  """No stored profile (an empty cache directory): KnapSpec's first generation under tp=2
  measures the profile on the split model, then decodes AR's one-device tokens. Before session
  28 the profile's draft steps failed there (a skip set placed on one device, passed to a
  program compiled for the mesh)."""
  path, _ = split_models["llama"]
  prompt = np.random.default_rng(3).integers(0, 64, size=12).tolist()
  got = _worker("measured", dict(model=str(path), prompt=prompt, new=NEW, tp=2),
                env={"KNAPSPEC_CACHE": str(tmp_path)})
  assert got["tokens"] == got["single"]
  assert got["profile"].endswith("+tp2") and got["step_samples"] > 0
  assert list(tmp_path.glob("profiles/*_tp2__float32.json"))  # saved for the next process


def test_pallas_kernel_runs_per_device_over_its_heads(split_models):
  """The Pallas attention kernel (interpreted on CPU) under shard_map, in one-token steps and the
  fixed method's verify windows: KV heads split (tp 2) and replicated (tp 8, 2 KV heads) give
  AR's tokens with XLA's attention on one device."""
  path, hf = split_models["llama"]
  prompt = np.random.default_rng(8).integers(0, hf.config.vocab_size, size=12).tolist()
  got = _worker("pallas", dict(model=str(path), prompt=prompt, new=6, tps=[2, 8]))
  assert len(got["single_xla"]) == 6
  for tp in (2, 8):
    assert got[f"tp{tp}_ar"] == got["single_xla"] and got[f"tp{tp}_fixed"] == got["single_xla"]


def test_meshes_that_cannot_split_the_model_are_refused(split_models, tmp_path, tiny_builder):
  undivided = tmp_path / "four_heads"  # conftest's tiny llama: 4 query heads, not 8
  tiny_builder("llama").save_pretrained(undivided, safe_serialization=True)
  path, _ = split_models["llama"]
  got = _worker("errors", dict(model=str(path), undivided=str(undivided)))
  assert all(e is not None and e["type"] == "UnsupportedModelError" for e in got.values()), got
  assert "tp=3 does not divide the 8 available devices" in got["devices"]["message"]
  assert "tp=16 needs 16 devices, only 8" in got["too_many"]["message"]
  assert "does not divide the model's n_heads=4" in got["heads"]["message"]
  assert "fuse=True" in got["fuse"]["message"]
  assert "mesh must be a jax.sharding.Mesh" in got["not_a_mesh"]["message"]


def test_one_device_checks_without_a_mesh(tiny_models):
  """In this process (one CPU device): make_mesh refuses what it cannot build, check_divides
  names the size tp does not divide, and a model loaded without a mesh is as before."""
  cfg = tiny_models["qwen2"].jax.cfg  # 4 heads, d_ff 96, vocab 512
  with pytest.raises(UnsupportedModelError, match="tp=2 needs 2 devices, only 1"):
    sharding.make_mesh(2)
  with pytest.raises(UnsupportedModelError, match="tp must be a positive integer"):
    sharding.make_mesh(0)
  with pytest.raises(UnsupportedModelError, match="does not divide the model's d_ff=90"):
    sharding.check_divides(dataclasses.replace(cfg, d_ff=90), 4)
  with pytest.raises(UnsupportedModelError, match="does not divide the model's vocab_size=510"):
    sharding.check_divides(dataclasses.replace(cfg, vocab_size=510), 4)
  model = tiny_models["qwen2"].jax
  assert model.mesh is None and model.cache_sharding is None
  assert "wqkv" in model.params["layers"][0]  # fused, as on one device always


@pytest.mark.parametrize("tp,devices,message", [
    (0, 1, "generate.py: --tp must be >= 1, got 0"),
    (2, 1, "generate.py: UnsupportedModelError: tp=2 needs 2 devices, only 1 (cpu)"),
    # SmolLM2-135M has 9 query heads: refused from its config, before its weights are read
    (2, 2, "generate.py: UnsupportedModelError: tp=2 does not divide the model's n_heads=9"),
])
def test_generate_script_checks_tp_before_loading(tp, devices, message):
  script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "generate.py"
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  env.pop("KNAPSPEC_MODEL", None)
  proc = subprocess.run([sys.executable, str(script), "--prompt=hi", f"--tp={tp}", "--quiet"],
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
