"""A first load writes the params cache tensor by tensor as it converts them, so it holds one
layer at a time, not the whole model (issue 15 item 3: no full float32 copy on the host); the
cached values equal the checkpoint's; a cache directory that cannot be written still loads."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from knapspec_jax import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEAK_SCRIPT = """
import json, sys
import jax
import safetensors
import transformers
from knapspec_jax import checkpoint

transformers.AutoConfig.from_pretrained(sys.argv[1])  # its imports' memory is not the load's

def status_kb(field):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:
  f.write("5")  # resets the peak (VmHWM) to the current RSS: the imports' peak is not the load's
before = status_kb("VmRSS")
ckpt = checkpoint.load_checkpoint(sys.argv[1], use_cache=sys.argv[2] == "cache")
peak = status_kb("VmHWM")
total = sum(a.nbytes for a in jax.tree.leaves(ckpt.params))
print(json.dumps(dict(peak_kb=peak - before, params_bytes=total)))
"""


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
  """A Llama of 8 layers, 67 MB per layer in float32 (535 MB in all), in safetensors."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=1024, intermediate_size=4096,
                                 num_hidden_layers=8, num_attention_heads=8,
                                 num_key_value_heads=8, max_position_embeddings=256)
  path = tmp_path_factory.mktemp("wide") / "model"
  transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
  return path


def _peak(path, mode: str, cache: pathlib.Path) -> dict:
  env = dict(os.environ, KNAPSPEC_CACHE=str(cache), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), mode], env=env,
                       capture_output=True, text=True, check=True, cwd=ROOT).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_first_load_holds_about_one_layer_not_the_model(wide_checkpoint, tmp_path):
  """Peak RSS growth of a first load (which writes the cache) against the same load without the
  cache, which builds the whole model in memory: the streaming one grows by well under half
  of the model's bytes."""
  streamed = _peak(wide_checkpoint, "cache", tmp_path / "cache")
  whole = _peak(wide_checkpoint, "nocache", tmp_path / "unused")
  model_kb = streamed["params_bytes"] / 1024
  print(f"\n[first load] cache written while converting: +{streamed['peak_kb'] / 1024:.0f} MB; "
        f"without the cache: +{whole['peak_kb'] / 1024:.0f} MB; params {model_kb / 1024:.0f} MB")
  assert whole["peak_kb"] > 0.9 * model_kb  # the reference does hold the model
  assert streamed["peak_kb"] < 0.5 * model_kb


def test_streamed_cache_equals_the_checkpoint(wide_checkpoint, tmp_path, monkeypatch):
  monkeypatch.setenv("KNAPSPEC_CACHE", str(tmp_path / "cache"))
  first = checkpoint.load_checkpoint(wide_checkpoint)  # writes the cache while converting
  second = checkpoint.load_checkpoint(wide_checkpoint)  # reads it
  plain = checkpoint.load_checkpoint(wide_checkpoint, use_cache=False)
  import jax
  for a, b, c in zip(*(jax.tree.leaves(x.params) for x in (first, second, plain))):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)


def test_unwritable_cache_still_loads(wide_checkpoint, tmp_path, monkeypatch):
  """A cache path under a regular file cannot be created (by root either): the load warns and
  holds its params in memory."""
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  monkeypatch.setenv("KNAPSPEC_CACHE", str(blocker / "cache"))
  with pytest.warns(UserWarning, match="could not write params cache"):
    ckpt = checkpoint.load_checkpoint(wide_checkpoint)
  want = checkpoint.load_checkpoint(wide_checkpoint, use_cache=False)
  np.testing.assert_array_equal(ckpt.params["layers"][3]["w_down"],
                                want.params["layers"][3]["w_down"])
