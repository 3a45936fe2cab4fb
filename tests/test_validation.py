"""Bad input at the API's edge and on generate.py's command line (issue 12): each case fails
before any work with a documented error class (a ValueError subclass) that names the argument as
the user wrote it, or, where the input is legal (a tiny temperature, a huge token budget on a
short answer), behaves as the definition says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import knapspec_jax as ks
from knapspec_jax import api, metrics, sampling, speculative

from conftest import REPO

CONTEXT = 2048  # four attention buckets: 256, 512, 1024, 2048


@pytest.fixture(scope="module")
def long_ctx(tiny_builder, tmp_path_factory):
  """A 2-layer transformers Llama with a 2048-token context, and knapspec_jax's load of it."""
  hf = tiny_builder("llama", seed=41)
  hf.config.max_position_embeddings = CONTEXT
  path = tmp_path_factory.mktemp("long_ctx")
  hf.save_pretrained(path, safe_serialization=True)
  model = api.load_model(str(path), use_cache=False)
  assert model.cfg.max_seq_len == CONTEXT
  return hf, model


# ------------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("prompt, match", [
    (np.array([1.5, 2.7]), r"prompt ids must be integers, got float64"),
    ([1.0, 2.0], r"prompt ids must be integers"),
    (np.array([True, False]), r"prompt ids must be integers, got bool"),
    ([2**31], r"must lie in \[0, 512\)"),
    (np.array([3, 2**40]), r"must lie in \[0, 512\)"),
    ([2**70], r"prompt ids must be integers"),
    (None, r"the prompt is None"),
    (["hello", "world"], r"prompt ids must be integers"),
    ([[1, 2], [3]], r"one sequence"),
    ([], r"the prompt is empty"),
], ids=["float_array", "float_list", "bools", "2**31", "2**40", "2**70", "None", "strings",
        "ragged", "empty"])
def test_bad_token_ids_are_prompt_errors_before_any_compile(long_ctx, prompt, match):
  model = long_ctx[1].fresh()
  with pytest.raises(ks.PromptError, match=match):
    api.generate(model, prompt, 4)
  assert model.compiled.stats.compiles == 0


def test_integer_arrays_of_any_width_are_token_ids(long_ctx):
  _, model = long_ctx
  want = api.generate(model, [5, 7, 11], 4, ignore_eos=True).output_ids
  for ids in (np.array([5, 7, 11], np.int64), np.array([5, 7, 11], np.uint16), (5, 7, 11)):
    assert api.generate(model, ids, 4, ignore_eos=True).output_ids == want


@pytest.mark.parametrize("text, match", [
    ("\ud800", r"not valid Unicode text: surrogates not allowed at character 0 \('\\ud800'\)"),
    ("ok \udfff then", r"not valid Unicode text: .* at character 3"),
    (None, r"the prompt must be text \(a str\), got NoneType"),
    (b"bytes", r"the prompt must be text \(a str\), got bytes"),
])
def test_text_prompts_must_be_valid_unicode_strings(smol_jax, text, match):
  with pytest.raises(ks.PromptError, match=match):
    api.encode_prompt(smol_jax, text)
  if isinstance(text, str):
    with pytest.raises(ks.PromptError, match=match):
      api.generate(smol_jax, text, 4)


@pytest.mark.parametrize("max_new", [2**31, 2**40, np.int64(2**31)])
def test_huge_token_budget_fails_fast(long_ctx, max_new):
  """Over int32 (the device's counter): a PromptError before anything compiles."""
  model = long_ctx[1].fresh()
  start = time.perf_counter()
  with pytest.raises(ks.PromptError, match=r"max_new_tokens must be below 2\*\*31"):
    api.generate(model, [1, 2, 3], max_new)
  assert time.perf_counter() - start < 1.0
  assert model.compiled.stats.compiles == 0


# --------------------------------------------------------------- methods and their options

@pytest.mark.parametrize("make, match", [
    (lambda: ks.KnapSpecConfig(interval=1.5), r"^interval must be an integer, got 1\.5"),
    (lambda: ks.KnapSpecConfig(gamma_max=4.0), r"^gamma_max must be an integer, got 4\.0"),
    (lambda: ks.KnapSpecConfig(gamma_max=99),
     rf"^gamma_max must be in 1\.\.{speculative.MAX_GAMMA}, got 99"),
    (lambda: ks.DelConfig(gamma_max=2.5), r"^gamma_max must be an integer"),
    (lambda: ks.FixedConfig(gamma=3.0), r"^gamma must be an integer, got 3\.0"),
    (lambda: ks.ClaspConfig(gamma=True), r"^gamma must be an integer, got True"),
    (lambda: ks.FixedConfig(threshold="0.5"), r"^threshold must be a number, got '0\.5'"),
    (lambda: ks.KnapSpecConfig(threshold=0.0), r"^threshold must be in \(0\.0, 1\.0\]"),
    (lambda: ks.KnapSpecConfig(n_ref=2.0), r"^n_ref must be an integer"),
    (lambda: ks.KnapSpecConfig(tau="0.5"), r"^tau must be a number"),
    (lambda: ks.KnapSpecConfig(margin=float("nan")), r"^margin must be in"),
    (lambda: ks.KnapSpecConfig(search_budget=-0.1), r"^search_budget must be in"),
    (lambda: ks.KnapSpecConfig(max_weight=0), r"^max_weight must be >= 1, got 0"),
    (lambda: ks.KnapSpecConfig(protect_ends="no"), r"^protect_ends must be True or False"),
    (lambda: ks.ClaspConfig(n_skip=2.5), r"^n_skip must be an integer"),
    (lambda: ks.DelConfig(min_exit=0), r"^min_exit must be >= 1"),
])
def test_method_config_fields_are_checked_by_type_and_range(make, match):
  with pytest.raises(ks.MethodError, match=match):
    make()


def test_method_configs_take_numpy_numbers():
  config = ks.KnapSpecConfig(interval=np.int64(8), threshold=np.float32(0.5), gamma_max=np.int32(4))
  assert config.interval == 8 and config.gamma_max == 4


@pytest.mark.parametrize("make, match", [
    (lambda: ks.SamplingConfig(top_k=True), r"^top_k must be an integer >= 0 .* got True"),
    (lambda: ks.SamplingConfig(top_k=2.0), r"^top_k must be an integer"),
    (lambda: ks.SamplingConfig(temperature="1"), r"^temperature must be a finite number > 0"),
    (lambda: ks.SamplingConfig(temperature=float("inf")), r"^temperature must be a finite"),
    (lambda: ks.SamplingConfig(temperature=0.0), r"^temperature must be a finite number > 0"),
    (lambda: ks.SamplingConfig(top_p=True), r"^top_p must be a number in \(0, 1\]"),
    (lambda: ks.SamplingConfig(seed=1.5), r"^seed must be an integer in 0\.\.2\*\*32 - 1"),
    (lambda: ks.SamplingConfig(seed=2**32), r"^seed must be an integer in 0\.\.2\*\*32 - 1"),
    (lambda: ks.SamplingConfig(rule=["speculative"]), r"^unknown acceptance rule"),
])
def test_sampling_fields_are_checked_by_type_and_range(make, match):
  with pytest.raises(ks.SamplingError, match=match):
    make()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="foo"), ks.MethodError, r"unknown method 'foo'"),
    (dict(method=None), ks.MethodError, r"unknown method None"),
    (dict(method="knapspec", gamma_max=2.5), ks.MethodError, r"^gamma_max must be an integer"),
    (dict(method="fixed", gama=3), ks.MethodError, r"has no options \['gama'\]"),
    (dict(method="fixed", width=4), ks.MethodError, r"width must be an integer in 5\.\.32 .*"
                                                    r"gamma \+ 1 = 5"),
    (dict(method="knapspec", width=8), ks.MethodError, r"gamma_max \+ 1 = 11"),
    (dict(method="ar", width=True), ks.MethodError, r"AR width must be an integer"),
    (dict(method="ar", gamma=3), ks.MethodError, r"method 'ar' takes no options"),
    (dict(sampling={"temperature": 1.0}), ks.SamplingError, r"must be a SamplingConfig"),
])
def test_generate_checks_method_and_options_before_compiling(long_ctx, kwargs, error, match):
  model = long_ctx[1].fresh()
  with pytest.raises(error, match=match):
    api.generate(model, [1, 2, 3], 4, **kwargs)
  assert model.compiled.stats.compiles == 0


def test_tiny_temperature_samples_the_greedy_tokens(long_ctx, hf_greedy):
  """temperature -> 0 is greedy decoding. 1e-38 (and 1e-45, which float32 flushes to zero) used
  to give nan probabilities and token 0; now AR and a speculative method sample transformers'
  greedy tokens at any seed."""
  hf, model = long_ctx
  ids = [3, 14, 15, 92, 65]
  want = hf_greedy(hf, ids, 12)
  for temperature in (1e-38, 1e-45):
    for seed in (0, 7):
      s = ks.SamplingConfig(temperature=temperature, seed=seed)
      assert api.generate(model, ids, 12, ignore_eos=True, sampling=s).output_ids == want
  fixed = api.generate(model, ids, 12, method="fixed", ignore_eos=True,
                       config=ks.FixedConfig(skip=ks.SkipMask.from_layers(2, attn=[1]), gamma=3,
                                             threshold=1e-4),
                       sampling=ks.SamplingConfig(temperature=1e-38))
  assert fixed.output_ids == want and fixed.stats["speculation_steps"] > 0


def test_tiny_temperature_probabilities_are_one_hot_at_the_argmax():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 50)).astype(np.float32) * 5
  for temperature in (1e-38, 1e-45, 1e-30):
    p = np.asarray(sampling.probs(logits, sampling.Filter(temperature, 0, 1.0, "speculative")))
    np.testing.assert_array_equal(p, np.eye(50, dtype=np.float32)[logits.argmax(-1)])
  # An ordinary temperature is unchanged: softmax(logits / T).
  p = np.asarray(sampling.probs(logits, sampling.Filter(0.7, 0, 1.0, "speculative")))
  z = logits / 0.7
  want = np.exp(z - z.max(-1, keepdims=True))
  np.testing.assert_allclose(p, want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ load_model

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(path=42), ks.CheckpointError, r"path must be a \.gguf file or HF directory .* got int"),
    (dict(path=["model.gguf"]), ks.CheckpointError, r"got list"),
    (dict(dtype="float16"), ks.UnsupportedModelError, r"dtype must be one of \['bfloat16', "
                                                      r"'float32'\], got 'float16'"),
    (dict(dtype=None), ks.UnsupportedModelError, r"dtype must be one of"),
    (dict(attention="flash"), ks.UnsupportedModelError, r"attention must be one of"),
])
def test_load_model_arguments(kwargs, error, match):
  start = time.perf_counter()
  with pytest.raises(error, match=match):
    api.load_model(**kwargs)
  assert time.perf_counter() - start < 1.0  # nothing was read


def test_knapspec_model_pointing_nowhere_names_the_variable(monkeypatch, tmp_path):
  missing = tmp_path / "nowhere.gguf"
  monkeypatch.setenv("KNAPSPEC_MODEL", str(missing))
  with pytest.raises(ks.CheckpointError, match=rf"KNAPSPEC_MODEL={missing}: no such file"):
    api.load_model()


def test_every_error_class_is_a_value_error():
  for cls in (ks.PromptError, ks.MethodError, ks.SamplingError, ks.CheckpointError,
              ks.UnsupportedModelError, ks.SkipMaskError):
    assert issubclass(cls, ValueError)


# ----------------------------------------------------------------------- warm-up horizon

def test_warmup_compiles_only_the_buckets_before_the_first_possible_stop(long_ctx, monkeypatch):
  """With EOS possible, a budget of 10**9 warms up the buckets of the first WARMUP_HORIZON
  tokens only; a run that goes past them compiles the next buckets when it gets there, counted
  in compile_in_decode_s, with the same tokens as a run whose warm-up compiled everything."""
  _, model = long_ctx
  prompt = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
  monkeypatch.setattr(api, "WARMUP_HORIZON", 100)
  everything = model.fresh()  # ignore_eos: every bucket up to 10 + 700 is certain
  ref = api.generate(everything, prompt, 700, ignore_eos=True)
  assert everything.compiled.stats.compiles >= 4  # prefill, buckets 256, 512, 1024
  assert ref.stats["compile_in_decode_s"] == 0.0

  # EOS at the first token that does not occur earlier in the output, from the 4th on.
  stop = next(i for i in range(3, 700) if ref.output_ids[i] not in ref.output_ids[:i])
  short = model.fresh()
  short.eos_ids = (ref.output_ids[stop],)
  got = api.generate(short, prompt, 10**9)
  assert got.stop_reason == "eos" and got.output_ids == ref.output_ids[:stop + 1]
  assert short.compiled.stats.compiles <= 2  # prefill and the 256 bucket, not 2048's

  # Past the horizon: the 512 and 1024 buckets compile inside the decode, same tokens.
  unused = next(t for t in range(model.cfg.vocab_size) if t not in ref.output_ids)
  later = model.fresh()
  later.eos_ids = (unused,)
  got = api.generate(later, prompt, 700)
  assert got.output_ids == ref.output_ids and got.stop_reason == "max_new_tokens"
  assert got.stats["compile_in_decode_s"] > 0


# ----------------------------------------------------------------------------- generate.py

GENERATE = [sys.executable, str(REPO / "experiments" / "generate.py")]


def _generate(args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # probe as users do
  start = time.perf_counter()
  proc = subprocess.run(GENERATE + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)
  return proc, time.perf_counter() - start


@pytest.mark.parametrize("args, message", [
    (["--method=foo", "--prompt=x"], "unknown --method=foo; available: ar, clasp, del, fixed, "
                                     "knapspec"),
    (["--prompt="], "the prompt is empty"),
    (["--prompt=x", "--gamma=1.5"], "flag --gamma=1.5"),
    (["--prompt=x", "--method=fixed", "--skip_attn=4,x"], "--skip_attn takes layer indices"),
    (["--prompt=x", "--width=0"], "--width must be in 1..32"),
    (["--prompt=x", "--compare_ar", "--repeats=0"], "--repeats must be >= 1, got 0"),
    (["--prompt=x", "--prompt_file=y"], "give exactly one of --prompt and --prompt_file"),
])
def test_cli_usage_errors_exit_2_fast_with_one_line(args, message):
  proc, elapsed = _generate(args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("generate.py: ") and message in lines[0], lines
  assert elapsed < 3.0, f"{elapsed:.1f} s"


@pytest.mark.parametrize("args, message", [
    (["--prompt=x", "--method=fixed", "--gamma_max=3"], "--gamma_max: not an option of "
                                                        "--method=fixed"),
    (["--prompt=x", "--method=knapspec", "--threshold=2"], "MethodError: threshold must be in"),
    (["--prompt=x", "--temperature=0"], "SamplingError: temperature must be"),
    (["--prompt=x", "--seed=3"], "--seed needs sampling"),
    (["--prompt=x", "--method=fixed", "--width=3"], "gamma + 1 = 5; got 3"),
])
def test_cli_option_errors_exit_2_before_the_model_loads(args, message):
  proc, _ = _generate(args)
  assert proc.returncode == 2, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
  assert "[generate] loading" not in proc.stderr


def test_cli_help_exits_0_and_lists_the_options():
  proc, _ = _generate(["--help"])
  assert proc.returncode == 0, proc.stderr
  for flag in ("--gamma", "--gamma_max", "--threshold", "--interval", "--n_ref",
               "--search_budget", "--skip_attn", "--skip_mlp", "--n_skip", "--temperature",
               "--top_k", "--top_p", "--seed", "--width", "--quiet"):
    assert f"{flag}:" in proc.stdout or f"--[no]{flag[2:]}:" in proc.stdout, flag


def test_cli_constants_match_the_package():
  """generate.py names the methods, the widest width and the kernels itself (to fail fast on a
  bad --method without importing jax): they must be the package's."""
  code = ("import sys; sys.argv = ['generate']; sys.path.insert(0, 'experiments'); "
          "import generate, knapspec_jax as ks; from knapspec_jax import config, kv_cache; "
          "print(generate.METHODS == ks.available_methods(), "
          "generate.WIDTH_MAX == kv_cache.SLACK, "
          "tuple(generate.FLAGS['attention'].parser.enum_values) == config.ATTENTION_IMPLS)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.stdout.split() == ["True", "True", "True"], proc.stderr[-2000:]


def test_cli_fixed_skip_set_sampling_and_progress(tmp_path):
  """A real run: the skip flags reach the method's config, the warm-up run's compile is reported
  as such, progress lines appear on stderr, and jax's backend probe lines do not."""
  out = tmp_path / "out.json"
  proc, _ = _generate(["--prompt=Name three prime numbers.", "--method=fixed",
                       "--skip_attn=4,6,8", "--skip_mlp=10", "--gamma=2", "--max_new_tokens=6",
                       "--ignore_eos", "--compare_ar", f"--output_json={out}"], timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Unable to initialize backend" not in proc.stderr
  for i in (1, 2, 3):  # three pairs by default
    assert f"[generate] fixed: timed run {i} of 3 done, 6 tokens" in proc.stderr
    assert f"[generate] ar: timed run {i} of 3 done, 6 tokens" in proc.stderr
  assert "(warm-up run)" in proc.stdout
  assert re.search(r"speedup over AR: [\d.]+x decode, [\d.]+x end-to-end \(medians of 3 paired "
                   r"runs; decode [\d.]+-[\d.]+x; AR's own runs [\d.]+-[\d.]+x their median\); "
                   r"output identical to AR", proc.stdout), proc.stdout
  # what the method did: a fixed draft drafts in every window
  assert re.search(r"fixed drafted in (\d+) of \1 decode windows; [\d.]+ of drafted tokens "
                   r"accepted", proc.stdout), proc.stdout
  assert "draft skipping 3 attention + 1 MLP sublayers, gamma 2" in proc.stdout, proc.stdout
  fixed, ar = json.loads(out.read_text())
  skip = fixed["stats"]["config"]["skip"]  # the config as dataclasses.asdict wrote it
  got = ks.SkipMask.from_list(skip["skip"] if isinstance(skip, dict) else skip)
  assert got == ks.SkipMask.from_layers(30, attn=[4, 6, 8], mlp=[10])
  assert fixed["stats"]["config"]["gamma"] == 2
  assert fixed["output_ids"] == ar["output_ids"]
  quiet, _ = _generate(["--prompt=Hi", "--max_new_tokens=2", "--quiet"], timeout=600)
  assert quiet.returncode == 0 and "[generate]" not in quiet.stderr


def test_paired_speedup_is_the_median_of_the_pairs():
  """metrics.paired_speedup (generate.py's and benchmark.py's figure) against numpy, on made-up
  runs: the median of the paired ratios (not the ratio of medians), and AR's spread around its
  own median."""
  method = [(22.1, 20.0), (18.0, 16.5), (19.5, 18.0)]  # (decode, end-to-end) tok/s
  ar = [(17.5, 16.0), (19.0, 17.5), (19.4, 17.8)]
  run = lambda t: types.SimpleNamespace(tokens_per_s=t[0], e2e_tokens_per_s=t[1])
  got = metrics.paired_speedup([run(t) for t in method], [run(t) for t in ar])
  ratios = np.array([m[0] / a[0] for m, a in zip(method, ar)])
  assert got.decode == pytest.approx(np.median(ratios))
  assert (got.decode_low, got.decode_high) == pytest.approx((ratios.min(), ratios.max()))
  assert got.e2e == pytest.approx(np.median([m[1] / a[1] for m, a in zip(method, ar)]))
  ar_tps = np.array([a[0] for a in ar])
  assert (got.ar_low, got.ar_high) == pytest.approx(
      (ar_tps.min() / np.median(ar_tps), ar_tps.max() / np.median(ar_tps)))
  assert got.decode != pytest.approx(np.median([m[0] for m in method]) / np.median(ar_tps))
  assert got.describe() == ("1.01x decode, 1.01x end-to-end (medians of 3 paired runs; decode "
                            "0.95-1.26x; AR's own runs 0.92-1.02x their median)")
  one = metrics.paired_speedup([run(method[0])], [run(ar[0])])
  assert one.describe() == "1.26x decode, 1.25x end-to-end (one pair)"
  with pytest.raises(ValueError, match="as many runs as AR runs, at least one; got 3 and 2"):
    metrics.paired_speedup([run(t) for t in method], [run(t) for t in ar[:2]])


@pytest.mark.parametrize("field,value", [("gain_share", -0.1), ("explore_budget", "0.1"),
                                         ("compile_horizon", 1.5), ("compile_horizon", -1)])
def test_knapspec_search_rule_fields_are_checked(field, value):
  with pytest.raises(ks.MethodError, match=field):
    ks.KnapSpecConfig(**{field: value})
