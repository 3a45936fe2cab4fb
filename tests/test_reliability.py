"""Reliability: speculative output equals AR's under fuzzing up to the cache's end, generation stops
cleanly when the cache is full, bfloat16 agreement under a shared kernel shape, and clear errors
for crafted checkpoint files and mismatched model pieces.

The property tests run a bounded number of examples in CI; KNAPSPEC_PROPERTY_EXAMPLES raises it
for a long run (BENCHMARKS.md, "Reliability").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import struct
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import knapspec_jax as ks
from knapspec_jax import api, decoding, engine, speculative
from knapspec_jax.checkpoint import CheckpointError
from knapspec_jax.kv_cache import SLACK, KVCache

PROPERTY_EXAMPLES = int(os.environ.get("KNAPSPEC_PROPERTY_EXAMPLES", "15"))
SMOL_EXAMPLES = int(os.environ.get("KNAPSPEC_SMOL_EXAMPLES", "3"))
CONTEXT = 64  # the short-context model's max_seq_len: prompts + outputs often reach it

# Sublayers are all the cost and verification is as cheap as a step: the methods draft.
PAYS = dict(device="synthetic", model="test", dtype="float32", c0=1e-4, a0=1e-3, a1=0.0, m=1e-3,
            v0=0.0, v1=0.0)


@pytest.fixture(scope="module")
def short_ctx(tiny_builder, tmp_path_factory):
  """A 2-layer transformers Llama with a 64-token context, loaded by knapspec_jax."""
  hf = tiny_builder("llama", seed=31)
  hf.config.max_position_embeddings = CONTEXT
  path = tmp_path_factory.mktemp("short_ctx")
  hf.save_pretrained(path, safe_serialization=True)
  model = api.load_model(str(path), use_cache=False)
  assert model.cfg.max_seq_len == CONTEXT and model.cfg.n_layers == 2
  model.profile = ks.LatencyProfile(n_layers=2, **PAYS)
  return hf, model, path


def _method_config(data, method: str, n_layers: int):
  threshold = data.draw(st.sampled_from([1e-4, 0.05, 0.3, 0.7, 1.0]), label="threshold")
  interval = data.draw(st.integers(1, 8), label="interval")
  n_ref = data.draw(st.integers(1, 8), label="n_ref")
  gamma = data.draw(st.sampled_from([1, 2, 3, 5, 8, speculative.MAX_GAMMA]), label="gamma")
  if method == "fixed":
    bits = data.draw(st.lists(st.booleans(), min_size=2 * n_layers, max_size=2 * n_layers),
                     label="skip")
    return ks.FixedConfig(skip=ks.SkipMask(tuple(bits)), gamma=gamma, threshold=threshold,
                          interval=interval)
  if method == "knapspec":
    return ks.KnapSpecConfig(interval=interval, n_ref=n_ref, gamma_max=min(gamma, 10),
                             threshold=threshold, margin=-0.99, search_budget=100.0,
                             protect_ends=False,  # 2 layers: both are ends
                             charge_compile=data.draw(st.booleans(), label="charge_compile"))
  return ks.DelConfig(interval=interval, n_ref=n_ref, gamma_max=min(gamma, 10),
                      threshold=threshold, min_exit=1)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_speculative_equals_ar_up_to_the_cache_end(short_ctx, data):
  """Random method, skip set, draft length, threshold, re-optimization interval, prompt, budget
  and EOS; prompts up to the context, budgets past it: always AR's tokens and stop reason."""
  _, model, _ = short_ctx
  v = model.cfg.vocab_size
  method = data.draw(st.sampled_from(["fixed", "knapspec", "del"]), label="method")
  config = _method_config(data, method, model.cfg.n_layers)
  ids = data.draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=CONTEXT - 1),
                  label="prompt")
  max_new = data.draw(st.integers(1, 80), label="max_new_tokens")
  use_eos = data.draw(st.booleans(), label="use_eos")
  eos = (data.draw(st.integers(0, v - 1), label="eos"),) if use_eos else ()
  saved, model.eos_ids = model.eos_ids, eos
  try:
    want = api.generate(model, ids, max_new)
    got = api.generate(model, ids, max_new, method=method, config=config)
  finally:
    model.eos_ids = saved
  assert got.output_ids == want.output_ids
  assert got.stop_reason == want.stop_reason
  assert got.new_tokens <= min(max_new, CONTEXT - len(ids) + 1)


@pytest.fixture
def smol_pays(smol_jax):
  saved = smol_jax.profile
  smol_jax.profile = ks.LatencyProfile(n_layers=smol_jax.cfg.n_layers, **PAYS)
  yield smol_jax
  smol_jax.profile = saved


@settings(max_examples=SMOL_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                    max_size=60),
       bits=st.lists(st.booleans(), min_size=60, max_size=60),
       gamma=st.integers(1, 6), threshold=st.sampled_from([1e-4, 0.3, 0.7]),
       max_new=st.integers(1, 12))
def test_smollm2_text_prompts_equal_ar(smol_pays, text, bits, gamma, threshold, max_new):
  """Real text through the chat template, random skip sets of SmolLM2's 60 sublayers."""
  model = smol_pays
  want = api.generate(model, text, max_new, ignore_eos=True)
  got = api.generate(model, text, max_new, method="fixed", ignore_eos=True,
                     config=ks.FixedConfig(skip=ks.SkipMask(tuple(bits)), gamma=gamma,
                                           threshold=threshold))
  assert got.output_ids == want.output_ids


# --------------------------------------------------------------------------- the cache's end

@pytest.mark.parametrize("method, config", [
    ("ar", None), ("fixed", ks.FixedConfig(gamma=speculative.MAX_GAMMA, threshold=1e-4)),
    ("knapspec", ks.KnapSpecConfig(interval=2, n_ref=4, threshold=1e-4, margin=-0.99,
                                   search_budget=100.0, protect_ends=False,
                                   charge_compile=False))])
def test_generation_stops_when_the_cache_is_full(short_ctx, hf_greedy, method, config):
  """A 50-token prompt in a 64-token context with a budget of 100: 15 new tokens (14 free
  positions and the prediction at the last one), stop reason cache_full, and the tokens are
  transformers' own, so nothing past the cache was read or overwritten. The fixed draft of 30
  tokens makes every verify window reach into the cache's slack."""
  hf, model, _ = short_ctx
  ids = np.random.default_rng(5).integers(0, model.cfg.vocab_size, size=50)
  kwargs = {} if config is None else {"config": config}
  result = api.generate(model, ids, 100, method=method, ignore_eos=True, **kwargs)
  assert result.stop_reason == decoding.STOP_CACHE_FULL
  assert result.new_tokens == CONTEXT - 50 + 1
  assert result.output_ids == hf_greedy(hf, ids, CONTEXT - 50 + 1)
  if method != "ar":
    assert result.stats["speculation_steps"] > 0


@pytest.fixture(scope="module")
def short_ctx_two_rows(short_ctx):
  """short_ctx's weights with every one-token step two rows wide (ModelConfig.step_rows, the
  GPU default where the Pallas kernel serves steps and windows)."""
  _, model, _ = short_ctx
  wide = ks.Model(dataclasses.replace(model.cfg, step_rows=2), model.params, model.tokenizer,
                  model.eos_ids, model.dtype, model.source)
  wide.profile = model.profile
  return wide


@pytest.mark.parametrize("method, config", [
    ("ar", None), ("fixed", ks.FixedConfig(gamma=3, threshold=1e-4)),
    ("fixed", ks.FixedConfig(skip=ks.SkipMask.from_layers(2, attn=[1]), gamma=1,
                             threshold=1e-4)),
    ("knapspec", ks.KnapSpecConfig(interval=2, n_ref=4, threshold=1e-4, margin=-0.99,
                                   search_budget=100.0, protect_ends=False,
                                   charge_compile=False))])
def test_two_row_steps_decode_transformers_tokens_up_to_the_cache_end(short_ctx,
                                                                      short_ctx_two_rows,
                                                                      hf_greedy, method, config):
  """With step_rows=2 each step of AR and of every draft is a two-row forward whose padding row
  writes keys and values one position past the new cursor (model.step), at the cache's end into
  its slack. The tokens stay transformers' own, from a short prompt and from one that fills the
  context (stop reason cache_full), so no padding row was read or overwrote a kept position;
  and the programs that ran were two rows wide."""
  hf, _, _ = short_ctx
  model = short_ctx_two_rows
  kwargs = {} if config is None else {"config": config}
  rng = np.random.default_rng(8)
  for n_prompt, max_new in ((7, 20), (50, 100)):
    ids = rng.integers(0, model.cfg.vocab_size, size=n_prompt)
    result = api.generate(model, ids, max_new, method=method, ignore_eos=True, **kwargs)
    n_new = min(max_new, CONTEXT - n_prompt + 1)
    assert result.new_tokens == n_new
    assert result.output_ids == hf_greedy(hf, ids, n_new)
    if method != "ar":
      assert result.stats["speculation_steps"] > 0
  steps = [p for p in model.compiled.programs() if isinstance(p, decoding.ARSegmentStatics)]
  assert steps and all(p.width == 2 for p in steps)


def test_the_widest_steps_fit_the_cache_slack_at_the_longest_draft(short_ctx, hf_greedy):
  """step_rows=4, the most ModelConfig allows, under a fixed draft of MAX_GAMMA tokens filling
  a context of 224, whose cache (256 positions) holds exactly the 32 positions of slack: the last
  draft step's padding reaches the cache's last position, and the tokens stay transformers' own
  to the end. ModelConfig caps step_rows at 4: forced to 16, this generation never ended (no
  bucket fits such a round at the context's end)."""
  hf, base, _ = short_ctx
  context = 224
  model = ks.Model(dataclasses.replace(base.cfg, step_rows=4, max_seq_len=context), base.params,
                   base.tokenizer, base.eos_ids, base.dtype, base.source)
  model.profile = base.profile
  assert KVCache.capacity_for(model.cfg) == context + SLACK
  ids = np.random.default_rng(9).integers(0, model.cfg.vocab_size, size=context - 14)
  config = ks.FixedConfig(skip=ks.SkipMask.from_layers(2, attn=[1]),
                          gamma=speculative.MAX_GAMMA, threshold=1e-4)
  assert speculative.round_span(model.cfg, config.gamma) == SLACK + 1
  result = api.generate(model, ids, 100, method="fixed", ignore_eos=True, config=config)
  assert result.stop_reason == decoding.STOP_CACHE_FULL
  assert result.output_ids == hf_greedy(hf, ids, 15)


# --------------------------------------------------------------------------------- bfloat16

@pytest.fixture(scope="module")
def short_ctx_bf16(short_ctx):
  _, _, path = short_ctx
  model = api.load_model(str(path), dtype="bfloat16", use_cache=False)
  model.profile = ks.LatencyProfile(n_layers=2, **{**PAYS, "dtype": "bfloat16"})
  return model


@pytest.mark.parametrize("method, config, width", [
    ("fixed", ks.FixedConfig(skip=ks.SkipMask.from_layers(2, attn=[1]), gamma=3,
                             threshold=1e-4), None),
    ("knapspec", ks.KnapSpecConfig(interval=2, n_ref=4, gamma_max=4, threshold=1e-4,
                                   margin=-0.99, search_budget=100.0, protect_ends=False,
                                   charge_compile=False), 5),
    ("del", ks.DelConfig(interval=2, n_ref=4, gamma_max=4, threshold=1e-4, min_exit=1), 5)])
def test_bfloat16_speculative_equals_ar_run_at_the_verify_width(short_ctx_bf16, method, config,
                                                                width):
  """In bf16 a gamma + 1-token verify and a one-token step round differently. AR run with the
  verify's shape (width) computes every token like the verify does: the fixed method (verify
  width gamma + 1) equals it token for token; methods whose gamma changes, with plain windows in
  between, do when run at one width themselves (width=...)."""
  model = short_ctx_bf16
  rng = np.random.default_rng(6)
  kwargs = {} if width is None else {"width": width}
  rounds = 0
  for _ in range(3):
    ids = rng.integers(0, model.cfg.vocab_size, size=int(rng.integers(4, 30)))
    got = api.generate(model, ids, 30, method=method, ignore_eos=True, config=config, **kwargs)
    rounds += got.stats["speculation_steps"]
    wide = api.generate(model, ids, 30, ignore_eos=True, width=width or config.gamma + 1)
    assert got.output_ids == wide.output_ids
  assert rounds > 0


def _head_products(jaxpr, vocab: int) -> list[tuple]:
  """The output shapes of every dot_general in a jaxpr (its loops' and calls' bodies too) whose
  last dimension is the vocabulary: the LM head's products."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1:] == (vocab,):
      found.append(tuple(eqn.outvars[0].aval.shape))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's, or a Jaxpr itself
        if hasattr(inner, "eqns"):
          found += _head_products(inner, vocab)
  return found


@pytest.mark.parametrize("width", [5, 8])
def test_at_a_width_ar_and_the_verify_take_the_head_over_the_same_rows(short_ctx_bf16, width):
  """A matrix product of another row count may sum each output in another order (on this CPU a
  one-row head and an 8-row head differ in the last bits of float32 logits: experiments/gpu/
  head_rows_rounding.py), so at a width AR's step (decoding.ar_segment) and the verify
  (speculative.spec_segment) both take the LM head as a product of `width` rows; the draft's
  own head is the only other one."""
  model = short_ctx_bf16
  cfg, vocab = model.cfg, model.cfg.vocab_size
  state = engine.abstract_state(model)
  attn_len = 256
  ar = jax.make_jaxpr(functools.partial(decoding.ar_segment, cfg=cfg, attn_len=attn_len,
                                        width=width))(model.params, state)
  assert _head_products(ar.jaxpr, vocab) == [(width, vocab)]
  spec = jax.make_jaxpr(functools.partial(
      speculative.spec_segment, cfg=cfg, skip=ks.SkipMask.from_layers(2, attn=[1]), gamma=3,
      attn_len=attn_len, width=width))(model.params, state, speculative.SpecCounters.abstract(),
                                       jax.ShapeDtypeStruct((), jnp.int32),
                                       jax.ShapeDtypeStruct((), jnp.float32))
  verify = [shape for shape in _head_products(spec.jaxpr, vocab) if len(shape) == 2]
  assert verify == [(width, vocab)], _head_products(spec.jaxpr, vocab)


def test_speculative_width_must_hold_the_longest_verify(short_ctx):
  _, model, _ = short_ctx
  with pytest.raises(ks.MethodError, match=r"width must be an integer in 5\.\.32"):
    api.generate(model, [1, 2, 3], 4, method="fixed", config=ks.FixedConfig(gamma=4), width=4)
  with pytest.raises(ks.MethodError, match=r"width must be an integer in 11\.\.32"):
    api.generate(model, [1, 2, 3], 4, method="del", width=33)


def test_ar_width_keeps_float32_output(short_ctx):
  _, model, _ = short_ctx
  ids = np.arange(3, 40) % model.cfg.vocab_size
  want = api.generate(model, ids, 40, ignore_eos=True)
  for width in (2, 11, 32):
    got = api.generate(model, ids, 40, ignore_eos=True, width=width)
    assert got.output_ids == want.output_ids and got.stop_reason == want.stop_reason
  for bad in (0, 33, 2.0):
    with pytest.raises(ValueError, match="width must be an integer"):
      api.generate(model, ids, 4, width=bad)


# ----------------------------------------------------------------------- crafted checkpoints

def _crafted_gguf(path, part: int, value: int):
  """A small valid GGUF (written by gguf's own writer) whose tensor info is then overwritten:
  part 3 is the dims (the first is patched), part 5 the data offset. The byte position of the
  field comes from gguf's reader."""
  import gguf
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tensor("token_embd.weight", np.ones((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  reader = gguf.GGUFReader(str(path))
  assert reader.tensors[0].data.shape == (8, 4)  # the file is valid before the patch
  field = reader.tensors[0].field.parts[part]
  offset = field.ctypes.data - reader.data.ctypes.data
  del reader, field
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(struct.pack("<Q", value))


@pytest.mark.parametrize("part, value", [(3, 1 << 40), (5, 1 << 60)],
                         ids=["absurd_shape", "offset_past_the_end"])
def test_crafted_gguf_is_a_clear_error_without_a_huge_allocation(tmp_path, part, value):
  path = tmp_path / "crafted.gguf"
  _crafted_gguf(path, part, value)
  tracemalloc.start()
  try:
    with pytest.raises(CheckpointError, match="corrupt or truncated GGUF"):
      api.load_model(str(path), use_cache=False)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated while rejecting a crafted file"


def _model_dir_with(tmp_path, tiny_path, weights: bytes):
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  shutil.copy(tiny_path / "config.json", model_dir)
  (model_dir / "model.safetensors").write_bytes(weights)
  return model_dir


def _safetensors(header: dict, data: bytes = b"\0" * 8, header_len: int | None = None) -> bytes:
  raw = json.dumps(header).encode()
  return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


@pytest.mark.parametrize("weights", [
    _safetensors({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                 header_len=1 << 62),
    _safetensors({"x": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}),
    _safetensors({"x": {"dtype": "F32", "shape": [1 << 28], "data_offsets": [0, 1 << 30]}}),
], ids=["absurd_header_length", "absurd_shape", "offsets_past_the_end"])
def test_crafted_safetensors_is_a_clear_error(tiny_models, tmp_path, weights):
  model_dir = _model_dir_with(tmp_path, tiny_models["llama"].path, weights)
  tracemalloc.start()
  try:
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
      api.load_model(str(model_dir), use_cache=False)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 64 << 20


def test_weights_that_do_not_match_the_config(tiny_models, tmp_path):
  """An embedding with fewer rows than config.json's vocab_size (a model/vocab mismatch)."""
  from safetensors.numpy import load_file, save_file
  src = tiny_models["llama"].path
  tensors = load_file(src / "model.safetensors")
  tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:400]
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  shutil.copy(src / "config.json", model_dir)
  save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=r"embed has shape \(400, 64\) but the config "
                                            r"\(llama, vocab 512, d_model 64\) needs \(512, 64\)"):
    api.load_model(str(model_dir), use_cache=False)


def test_tokenizer_larger_than_the_model_vocab(tiny_models, smol_jax, tmp_path):
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_models["llama"].path, model_dir)
  smol_jax.tokenizer.save_pretrained(model_dir)  # 49152 tokens against 512 embeddings
  with pytest.raises(CheckpointError, match=r"tokenizer has 49152 tokens but the model's "
                                            r"vocabulary has 512"):
    api.load_model(str(model_dir), use_cache=False)


def test_config_json_without_a_known_architecture(tiny_models, tmp_path):
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_models["llama"].path, model_dir)
  config = json.loads((model_dir / "config.json").read_text())
  del config["model_type"]
  (model_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ks.UnsupportedModelError, match=r"model_type None .* is not supported"):
    api.load_model(str(model_dir), use_cache=False)


# ------------------------------------------------------------------------ bad method options

def test_skip_mask_rules():
  with pytest.raises(ks.SkipMaskError, match="first and last layers may not be skipped"):
    ks.SkipMask.from_layers(4, attn=[0]).check(4, protect_ends=True)
  with pytest.raises(ks.SkipMaskError, match="first and last layers may not be skipped"):
    ks.SkipMask.from_layers(4, mlp=[3]).check(4, protect_ends=True)
  ks.SkipMask.from_layers(4, attn=[1, 2], mlp=[2]).check(4, protect_ends=True)
  with pytest.raises(ks.SkipMaskError, match="odd length"):
    ks.SkipMask((True, False, True))
  with pytest.raises(ks.SkipMaskError, match="outside 0..3"):
    ks.SkipMask.from_layers(4, attn=[4])


@pytest.mark.parametrize("make, match", [
    (lambda: ks.FixedConfig(gamma=speculative.MAX_GAMMA + 1), "gamma must be in"),
    (lambda: ks.FixedConfig(gamma=-1), "gamma must be in"),
    (lambda: ks.FixedConfig(threshold=float("nan")), "threshold must be in"),
    (lambda: ks.FixedConfig(threshold=-0.1), "threshold must be in"),
    (lambda: ks.KnapSpecConfig(gamma_max=0), "gamma_max must be in"),
    (lambda: ks.KnapSpecConfig(n_ref=0), "n_ref must be"),
    (lambda: ks.ClaspConfig(interval=0), "interval must be"),
])
def test_bad_method_options_name_the_problem(make, match):
  with pytest.raises(ks.MethodError, match=match):
    make()


@pytest.mark.parametrize("max_new", [2.5, "8", None])
def test_max_new_tokens_must_be_an_integer(short_ctx, max_new):
  _, model, _ = short_ctx
  with pytest.raises(ks.PromptError, match="max_new_tokens must be an integer"):
    api.generate(model, [1, 2, 3], max_new)


def test_prompt_that_fills_the_context_exactly(short_ctx):
  _, model, _ = short_ctx
  with pytest.raises(ks.PromptError, match=rf"prompt has {CONTEXT} tokens"):
    api.generate(model, np.ones(CONTEXT, np.int32), 1)
  last = api.generate(model, np.ones(CONTEXT - 1, np.int32), 5, ignore_eos=True)
  assert last.new_tokens == 2 and last.stop_reason == decoding.STOP_CACHE_FULL


def test_nothing_in_the_package_unpickles():
  """Checkpoints load through gguf and safetensors only: no pickle-based loader in the source.
  The unpickling is compile_cache's alone: the executable store (JAX's serialize_executable is
  pickle based), which reads only files that it wrote into the user's own cache directory, and
  the pipe between a process and the compile worker it started (_receive, and serve_worker's
  job payload)."""
  import ast
  import pathlib
  package = pathlib.Path(ks.__file__).parent
  for path in package.glob("*.py"):
    source = path.read_text()
    if path.name == "compile_cache.py":
      tree = ast.parse(source)
      readers = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                 and "pickle.load" in ast.get_source_segment(source, f)
                 and f.col_offset == 0}
      assert readers == {"load_entry", "_receive", "serve_worker"}, readers
      assert source.count("pickle.load") == 3
      source = source.replace("pickle.load", "")
    for forbidden in ("torch.load(", "pickle.load", "allow_pickle=True", "np.load("):
      assert forbidden not in source, f"{path.name} uses {forbidden}"
