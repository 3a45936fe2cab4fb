"""experiments/gpu/round_terms.py, first_call.py, call_cost.py, switch_cost.py, profile_gap.py
and step_width.py --smoke on the CPU: the GPU checks of where a speculation round's time goes,
of what a window's call costs, of what a new skip set costs, of what the profiler's loops
measure and of AR's step as a multi-row forward run end to end before device time is spent on
them, and their records add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_gpu_script_smoke


def test_round_terms_smoke(tmp_path):
  """Every gamma of the default sets (smoke: one attention and one MLP skipped); then a skip set
  given as a record's bits (--masks: layer 0's MLP and layer 1's attention and MLP of the tiny
  shape's 2 layers) at two confidence thresholds, and a mask of the wrong length refused by
  name; the segment timed also as compiled with CUDA graphs over its loops (--segment_graphs,
  on the CPU the same program)."""
  out = tmp_path / "round_terms.json"
  run_gpu_script_smoke("round_terms.py", out)
  records = json.loads(out.read_text())
  assert [r["gamma"] for r in records] == [1, 2, 4]
  run_gpu_script_smoke("round_terms.py", out, "--masks=0111", "--gammas=2", "--thresholds=0,2",
                       "--segment_graphs=0,1")
  masked = json.loads(out.read_text())
  assert [(r["n_attn_skipped"], r["n_mlp_skipped"], r["gamma"], r["threshold"],
           r["segment_graphs"]) for r in masked] == [
              (1, 2, 2, 0.0, False), (1, 2, 2, 0.0, True), (1, 2, 2, 2.0, False),
              (1, 2, 2, 2.0, True)]
  # threshold 0: every round drafts gamma; 2, above any probability: each draft ends at its first
  assert [r["draft_forwards_per_round"] for r in masked] == [2.0, 2.0, 1.0, 1.0]
  exiting = masked[2]
  assert exiting["ms_parts"] == pytest.approx(exiting["ms_per_draft_step"]
                                              + exiting["ms_per_verify"])
  bad = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu" / "round_terms.py"),
                        "--smoke", "--masks=01"], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--masks: 2 bits, the model has 4 sublayers" in bad.stderr
  for r in records:
    assert r["ms_per_round"] > 0 and r["ms_per_draft_step"] > 0 and r["ms_per_verify"] > 0
    assert r["ms_parts"] == pytest.approx(r["gamma"] * r["ms_per_draft_step"]
                                          + r["ms_per_verify"])
    assert r["ms_excess"] == pytest.approx(r["ms_per_round"] - r["ms_parts"])
    assert r["n_attn_skipped"] == r["n_mlp_skipped"] == 1
    assert min(r["kernels_per_body"].values()) > 0


def test_first_call_smoke(tmp_path):
  """experiments/gpu/first_call.py --smoke: every program's four calls are timed (and AR's
  again after the others), with each program but the search run once beforehand under
  --prime=one."""
  for prime in ("none", "one"):
    out = tmp_path / f"first_call_{prime}.json"
    run_gpu_script_smoke("first_call.py", out, f"--prime={prime}")
    records = json.loads(out.read_text())
    assert [r["program"] for r in records] == [
        "ar", "spec 1+1 g1 thr0.0", "spec 1+1 g1 thr1.5", "search (not primed)",
        "ar after all"]
    for r in records:
      assert len(r["calls_ms"]) == 4 and min(r["calls_ms"]) > 0
    assert {r.get("prime") for r in records[:-2]} == {prime}
    assert records[-2]["prime"] == "none"


def test_call_cost_smoke(tmp_path):
  """experiments/gpu/call_cost.py --smoke: each form is timed at every round count; the segment
  program runs exactly the rounds its budget asks for, host or device scalars alike, and the
  empty program none; a line per form."""
  out = tmp_path / "call_cost.json"
  run_gpu_script_smoke("call_cost.py", out)
  got = json.loads(out.read_text())
  assert got["rounds"] == [0, 1, 2]
  by = {(r["form"], r["rounds"]): r for r in got["records"]}
  assert set(by) == {(f, n) for f in ("host scalars", "device scalars", "empty program")
                     for n in (0, 1, 2)}
  for (form, n), r in by.items():
    assert r["rounds_run"] == [0 if form == "empty program" else n], (form, n, r)
    assert len(r["call_ms"]) == len(r["read_ms"]) == got["repeats"] and min(r["call_ms"]) > 0
  assert set(got["fits"]) == {"host scalars", "device scalars", "empty program"}


def test_switch_cost_smoke(tmp_path):
  """experiments/gpu/switch_cost.py --smoke: both modes time both sets; the run-time gated
  program compiles once, so its second skip set is got without a compile."""
  out = tmp_path / "switch_cost.json"
  run_gpu_script_smoke("switch_cost.py", out, "--modes=static,runtime")  # dispatch: see
  # tests/test_experiments.py::test_switch_cost_dispatch_runs_the_static_drafts_tokens
  records = json.loads(out.read_text())
  assert [(r["mode"], r["n_attn_skipped"]) for r in records] == [
      ("static", 0), ("static", 1), ("runtime", 0), ("runtime", 1)]
  for r in records:
    assert r["ms_per_round"] > 0 and r["ms_per_draft_step"] > 0 and r["switch_s"] >= 0
    assert r["switch_s"] >= r["segment_get_s"]
  static_new, runtime_first, runtime_new = records[1], records[2], records[3]
  assert static_new["segment_get_s"] > 0.05  # a new static set compiles its program
  assert runtime_first["segment_get_s"] > 0.05  # the gated program compiles once...
  assert runtime_new["segment_get_s"] < 0.05  # ...and a new set is only its flags


def test_profile_gap_smoke(tmp_path):
  """experiments/gpu/profile_gap.py --smoke: every loop length is timed four ways, before and
  after a search, and a line through the profiler's call times is fitted per bucket."""
  out = tmp_path / "profile_gap.json"
  run_gpu_script_smoke("profile_gap.py", out)
  records = json.loads(out.read_text())
  timed = [r for r in records if r["phase"] != "fit"]
  assert [(r["phase"], r["steps"]) for r in timed] == [
      ("fresh process", 4), ("fresh process", 16), ("after search", 4), ("after search", 16)]
  for r in timed:
    assert min(r[k] for k in ("profiler_ms", "back_to_back_ms", "after_idle_ms",
                              "run_ar_ms")) > 0
  (fit,) = [r for r in records if r["phase"] == "fit"]
  fresh = {r["steps"]: r["profiler_ms"] * r["steps"] for r in timed[:2]}
  assert fit["per_step_ms"] == pytest.approx((fresh[16] - fresh[4]) / 12)


def test_step_width_smoke(tmp_path):
  """experiments/gpu/step_width.py --smoke: AR's segment program at widths 1, 2 and 4, each timed
  by its slope; in float32 every width decodes width 1's tokens (a W-row step keeps row 0).
  --tall_tile_stages times the verify windows once per depth asked for, each record naming it."""
  out = tmp_path / "step_width.json"
  run_gpu_script_smoke("step_width.py", out, "--tall_tile_stages=2,3")
  records = json.loads(out.read_text())
  widths = [r for r in records if "width" in r]
  assert [r["width"] for r in widths] == [1, 2, 4]
  for r in widths:
    assert r["ms_per_step"] > 0 and r["equal_tokens"] == r["tokens"] == 16
  # beside them, the profiler's verify program at windows 1, 2 and 4, timed the same way
  verifies = [r for r in records if "verify_window" in r]
  assert [(r["verify_window"], r["tall_tile_stages"]) for r in verifies] == [
      (1, 2), (2, 2), (4, 2), (1, 3), (2, 3), (4, 3)]
  assert verifies == records[3:]
  assert all(r["ms_per_step"] > 0 and r["attn_len"] == 256 for r in verifies)


def test_step_width_on_real_weights(tmp_path):
  """step_width.py --gguf: the same timings on a real checkpoint (SmolLM2-135M, float32 on the
  CPU), a random KV cache beside its weights. Its tokens are counted, not required equal: real
  weights over random keys and values decode from near-ties (here the two widths part at the
  second token); test_ar_width_keeps_float32_output checks the widths on a real prompt."""
  out = tmp_path / "step_width.json"
  proc = run_gpu_script_smoke("step_width.py", out, "--gguf=smollm2-135m", "--widths=1,2",
                              "--verify=2")
  assert "SmolLM2-135M-Instruct.Q4_1.gguf" in proc.stdout
  records = json.loads(out.read_text())
  assert [(r.get("width"), r.get("verify_window")) for r in records] == [
      (1, None), (2, None), (None, 2)]
  assert all(r["ms_per_step"] > 0 for r in records)
  assert records[0]["equal_tokens"] == records[0]["tokens"] == 16
  assert 0 <= records[1]["equal_tokens"] <= records[1]["tokens"] == 16


def test_step_bandwidth_reads_step_width_records(tmp_path):
  """experiments/gpu/step_bandwidth.py: from step_width.py's records, each one-row step's bytes
  (the weights once, plus the keys and values of its bucket: two buckets differ by exactly the
  cache bytes between them), its GB/s against the read bandwidths given, and each verify's time
  over the step's at the same bucket. (Its rows, in a child process: the script defines absl
  flags on import.)"""
  records = [dict(attn_len=256, width=1, ms_per_step=2.0), dict(attn_len=256, width=2,
                                                               ms_per_step=1.0),
             dict(attn_len=256, verify_window=4, ms_per_step=3.0),
             dict(attn_len=256, verify_window=4, ms_per_step=2.5, tall_tile_stages=3),
             dict(attn_len=512, width=1, ms_per_step=4.0)]
  script = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("step_bandwidth", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
cfg = module.SHAPES["tiny"]
rows = module.rows(json.loads(sys.argv[2]), cfg, [100.0, 200.0])
print(json.dumps([rows, 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2]))
"""
  proc = subprocess.run([sys.executable, "-c", script,
                         str(REPO / "experiments" / "gpu" / "step_bandwidth.py"),
                         json.dumps(records)], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (short, long), kv_per_position = json.loads(proc.stdout.strip().splitlines()[-1])
  # bfloat16 keys and values of every layer, per cached position
  assert (long["step_gb"] - short["step_gb"]) * 1e9 == pytest.approx(256 * kv_per_position)
  assert short["gb_per_s"] == pytest.approx(short["step_gb"] / 2e-3)
  assert short["fractions"] == pytest.approx([short["gb_per_s"] / 100, short["gb_per_s"] / 200])
  assert short["verify_over_step"] == {"4": 1.5, "4 (tall tiles' stages 3)": 1.25}
  assert long["verify_over_step"] == {}
  assert short["width_over_step"] == {"2": 0.5} and long["width_over_step"] == {}
  # the two-row step read the same bytes in half the time
  assert short["width_fractions"]["2"] == pytest.approx([2 * f for f in short["fractions"]])
