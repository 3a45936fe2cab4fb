"""The latency profile's attention cost: per attention length where several were timed
(latency.attention_knots), against stated costs computed here with numpy."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from knapspec_jax import latency
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.skip_mask import SkipMask

LAYERS = 10
FIXED, MLP = 1e-4, 3e-5
ATTN = {256: 2e-5, 2048: 3e-5, 6144: 3.2e-5}  # one attention sublayer, seconds, by length


def samples(attn: dict) -> list[tuple]:
  """What a device with these stated costs measures for profile_masks-like (n_attn, n_mlp)."""
  masks = [(LAYERS, LAYERS), (2, LAYERS), (LAYERS, 2), (6, 6)]
  return [(a, m, n, FIXED + a * attn[n] + m * MLP) for n in attn for a, m in masks]


def test_knots_recover_the_stated_costs_and_continue_the_last_slope():
  p = latency.fit(samples(ATTN), [], "dev", "m", "float32", LAYERS)
  np.testing.assert_allclose([t for _, t in p.attn_knots], list(ATTN.values()), rtol=1e-6)
  assert [n for n, _ in p.attn_knots] == list(ATTN)
  # between lengths: the straight line between the two stated costs
  assert p.t_attn(4096) == pytest.approx(np.interp(4096, [2048, 6144], [3e-5, 3.2e-5]))
  # past the longest: the last segment's slope, (3.2e-5 - 3e-5) / 4096 per position
  assert p.t_attn(28672) == pytest.approx(3.2e-5 + (28672 - 6144) * 0.2e-5 / 4096)
  assert p.t_step(None, 2048) == pytest.approx(FIXED + LAYERS * (3e-5 + MLP))
  assert p.errors()["step_median_rel_err"] == pytest.approx(0.0, abs=1e-6)
  # the single line through all three lengths misses the stated costs where the knots do not
  line = dataclasses.replace(p, attn_knots=())
  assert abs(line.t_attn(256) - 2e-5) > 1e-6


def test_a_profile_stored_without_knots_gets_them_from_its_samples(tmp_path):
  p = latency.fit(samples(ATTN), [], "dev", "m", "float32", LAYERS)
  raw = json.loads(p.save(tmp_path / "p.json").read_text())
  assert len(raw["attn_knots"]) == 3
  del raw["attn_knots"]
  (tmp_path / "old.json").write_text(json.dumps(raw))
  old = LatencyProfile.load(tmp_path / "old.json")
  np.testing.assert_allclose(old.attn_knots, p.attn_knots)
  assert LatencyProfile.load(tmp_path / "p.json") == p


def test_one_length_keeps_the_line():
  p = latency.fit(samples({2048: 3e-5}), [], "dev", "m", "float32", LAYERS)
  assert p.attn_knots == () and latency.attention_knots(samples({2048: 3e-5})) is None
  assert p.t_attn(2048) == pytest.approx(p.a0 + p.a1 * 2048)


def test_profiles_of_one_length_each_merge_into_the_knots_of_all():
  """One process per attention length (issue 17's 70B runs may need it): merged, their samples
  give the stated cost at every length, as one process timing all three would."""
  parts = [dataclasses.replace(latency.fit(samples({n: t}), [], "dev", "m", "bfloat16", LAYERS),
                               read_gbps=gbps, call_s=call)
           for (n, t), gbps, call in zip(ATTN.items(), (4000.0, 4100.0, 3900.0),
                                         (1e-3, 3e-3, 2e-3))]
  merged = latency.merged(parts)
  np.testing.assert_allclose([t for _, t in merged.attn_knots], list(ATTN.values()), rtol=1e-6)
  assert merged.t_mlp == pytest.approx(MLP) and len(merged.step_samples) == 12
  assert (merged.read_gbps, merged.call_s) == (4000.0, 2e-3)  # medians
  assert latency.merged(parts[:1]) is parts[0]
  other = dataclasses.replace(parts[0], model="another")
  with pytest.raises(ValueError, match="cannot merge profiles of"):
    latency.merged([parts[1], other])


def test_scaled_scales_the_knots():
  p = latency.fit(samples(ATTN), [], "dev", "m", "float32", LAYERS)
  assert p.scaled(attn=2.0).t_attn(4096) == pytest.approx(2 * p.t_attn(4096))


def test_at_a_width_every_full_forward_costs_a_forward_of_that_width(tmp_path):
  """generate(width=W) runs AR's steps and every verify over W positions, drafts at their own:
  the profile at that width prices the full model's step and each verify, whatever its window,
  as the W-position forward (stated here), a draft step as before; the natural profile is
  unchanged, and saving one at a width stores what was measured, the natural one."""
  p = dataclasses.replace(latency.fit(samples(ATTN), [], "dev", "m", "float32", LAYERS),
                          v0=2e-6, v1=1e-9)
  wide = p.at_width(8)
  skip = SkipMask.from_layers(LAYERS, [0, 1, 2], [3])
  for n in ATTN:
    forward8 = FIXED + LAYERS * (ATTN[n] + MLP) + 7 * (2e-6 + 1e-9 * n)
    assert wide.t_step(None, n) == pytest.approx(forward8, rel=1e-6)
    assert wide.t_verify(3, n) == wide.t_verify(8, n) == pytest.approx(forward8, rel=1e-6)
    assert wide.t_step(skip, n) == p.t_step(skip, n) == pytest.approx(
        FIXED + 7 * ATTN[n] + 9 * MLP, rel=1e-6)
    assert p.t_step(None, n) == pytest.approx(FIXED + LAYERS * (ATTN[n] + MLP), rel=1e-6)
    assert p.t_verify(3, n) == pytest.approx(FIXED + LAYERS * (ATTN[n] + MLP)
                                             + 2 * (2e-6 + 1e-9 * n), rel=1e-6)
  assert p.at_width(None) is p and wide.at_width(8) is wide and wide.at_width(None) == p
  assert wide.errors() == p.errors()
  assert LatencyProfile.load(wide.save(tmp_path / "wide.json")) == p


def test_save_into_a_directory_names_the_file_itself(tmp_path):
  """run_qwen_profile.sh passed a directory (measure_profile.py --output=DIR): on the H200 the
  save then failed with IsADirectoryError after every measurement had run. A directory, existing
  or not, gets the file path_for names; a .json path is written as given."""
  p = latency.fit(samples(ATTN), [], "NVIDIA H200", "m+pallas", "bfloat16", LAYERS)
  existing = tmp_path / "profiles"
  existing.mkdir()
  for directory in (existing, tmp_path / "new" / "profiles"):
    written = p.save(directory)
    assert written == LatencyProfile.path_for("NVIDIA H200", "m+pallas", "bfloat16", directory)
    assert LatencyProfile.load(written) == p
  assert p.save(tmp_path / "given.json") == tmp_path / "given.json"


def test_a_missing_profile_is_measured_once_saved_and_then_read(tiny_models, tmp_path,
                                                              monkeypatch):
  """load_or_measure with no stored profile for (device, model, dtype) measures one and saves it
  in the user cache's profiles (latency.user_dir, here a folder of this test's); the next call, and
  a speculative method's lookup for a model with no profile (methods.profile_for), read it
  without measuring. (conftest stores the CI CPU's SmolLM2 profile for other CPUs, so the rest of
  the suite never takes this path.)"""
  import jax.numpy as jnp
  from knapspec_jax import methods
  monkeypatch.setattr(latency, "user_dir", lambda: tmp_path / "profiles")
  tiny = tiny_models["llama"].jax
  name = "tiny-load-or-measure"
  quick = dict(attn_lens=(256,), windows=(1, 2), steps=2, repeats=1)
  logged = []
  first = latency.load_or_measure(tiny.params, tiny.cfg, jnp.float32, name, log=logged.append,
                                  **quick)
  assert any(line.startswith(f"measuring the latency profile of {name}") for line in logged)
  path = LatencyProfile.path_for(latency.device_name(), name, "float32", tmp_path / "profiles")
  assert path.is_file() and LatencyProfile.load(path) == first
  assert first.device == latency.device_name() and first.n_layers == tiny.cfg.n_layers
  logged.clear()
  again = latency.load_or_measure(tiny.params, tiny.cfg, jnp.float32, name, log=logged.append,
                                  **quick)
  assert again == first and logged == []
  model = dataclasses.replace(tiny, source=str(tmp_path / name), profile=None)
  assert model.profile_name == name
  monkeypatch.setattr(latency, "measure", None)  # a measurement now would fail the test
  assert methods.profile_for(model) == first and model.profile == first


def test_a_cpus_first_use_measures_the_quick_profile(tiny_models, tmp_path, monkeypatch):
  """With no stored profile and no measure settings, load_or_measure on a CPU measures
  QUICK_MEASURE's two lengths (the README's main command on an unprofiled CPU: minutes, not a
  quarter of an hour); settings given are used as given."""
  import jax.numpy as jnp
  monkeypatch.setattr(latency, "user_dir", lambda: tmp_path / "profiles")
  asked = []
  real = latency.measure

  def recording(*args, **kwargs):
    asked.append({k: kwargs[k] for k in latency.QUICK_MEASURE if k in kwargs})
    return real(*args, **{**kwargs, **dict(attn_lens=(256,), windows=(1, 2), steps=2,
                                           repeats=1)})
  monkeypatch.setattr(latency, "measure", recording)
  tiny = tiny_models["llama"].jax
  latency.load_or_measure(tiny.params, tiny.cfg, jnp.float32, "tiny-first-use", log=len)
  latency.load_or_measure(tiny.params, tiny.cfg, jnp.float32, "tiny-given", log=len, steps=2,
                          attn_lens=(256,), windows=(1, 2), repeats=1)
  assert asked == [latency.QUICK_MEASURE,
                   dict(steps=2, attn_lens=(256,), windows=(1, 2), repeats=1)]


def test_loop_cost_separates_the_cost_per_call_from_the_cost_per_step():
  """A program whose call sleeps 60 ms plus 6 ms per step: loop_cost's two loop lengths give the
  step's cost, where one call's time over its steps (the profile before session 24) adds the
  call's cost to each step. Sleeps only overshoot; the bounds leave room for a busy machine."""
  import time
  fn = lambda n: time.sleep(0.060 + 0.006 * n)
  per_step, per_call = latency.loop_cost(fn, lambda n: (n,), 2, 8, repeats=3)
  assert 0.005 < per_step < 0.0075 and 0.050 < per_call < 0.075
  assert latency.median_seconds(fn, lambda: (2,), 1) / 2 > 0.03  # what one length measured
  # a line below zero at no steps (10 ms a step, -15 ms a call): no call cost, the long loop's
  # time over its steps (65 ms over 8)
  steep = lambda n: time.sleep(0.010 * n - 0.015)
  per_step, per_call = latency.loop_cost(steep, lambda n: (n,), 2, 8, repeats=3)
  assert per_call == 0.0 and 0.008 <= per_step < 0.0105


def test_a_measured_profile_keeps_its_call_cost_and_an_old_one_loads_without(tiny_models,
                                                                          tmp_path):
  import jax.numpy as jnp
  tiny = tiny_models["llama"].jax
  p = latency.measure(tiny.params, tiny.cfg, jnp.float32, "tiny", attn_lens=(256,),
                      windows=(1, 2), steps=2, repeats=1, log=lambda *a: None)
  assert p.call_s >= 0 and LatencyProfile.load(p.save(tmp_path / "p.json")) == p
  raw = json.loads((tmp_path / "p.json").read_text())
  del raw["call_s"]
  (tmp_path / "old.json").write_text(json.dumps(raw))
  assert LatencyProfile.load(tmp_path / "old.json").call_s == 0.0
  with pytest.raises(ValueError, match=f"holds a {64 * latency.LOOP_RATIO}-step loop"):
    latency.measure(tiny.params, tiny.cfg, jnp.float32, "tiny", attn_lens=(256,), windows=(1,),
                    steps=64, repeats=1, log=lambda *a: None)
