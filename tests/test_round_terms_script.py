"""experiments/gpu/round_terms.py and first_call.py --smoke on the CPU: the GPU checks of where
a speculation round's time goes run end to end before device time is spent on them, and their
records add up."""

from __future__ import annotations

import json

import pytest

from conftest import run_gpu_script_smoke


def test_round_terms_smoke(tmp_path):
  out = tmp_path / "round_terms.json"
  run_gpu_script_smoke("round_terms.py", out)
  records = json.loads(out.read_text())
  assert [r["gamma"] for r in records] == [1, 2, 4]
  for r in records:
    assert r["ms_per_round"] > 0 and r["ms_per_draft_step"] > 0 and r["ms_per_verify"] > 0
    assert r["ms_parts"] == pytest.approx(r["gamma"] * r["ms_per_draft_step"]
                                          + r["ms_per_verify"])
    assert r["ms_excess"] == pytest.approx(r["ms_per_round"] - r["ms_parts"])
    assert r["n_attn_skipped"] == r["n_mlp_skipped"] == 1
    assert min(r["kernels_per_body"].values()) > 0


def test_first_call_smoke(tmp_path):
  """experiments/gpu/first_call.py --smoke: every program's four calls are timed (and AR's
  again after the others), with each program run once beforehand under --prime=one."""
  for prime in ("none", "one"):
    out = tmp_path / f"first_call_{prime}.json"
    run_gpu_script_smoke("first_call.py", out, f"--prime={prime}")
    records = json.loads(out.read_text())
    assert [r["program"] for r in records] == [
        "ar", "spec 1+1 g1 thr0.0", "spec 1+1 g1 thr1.5", "ar after all"]
    for r in records:
      assert len(r["calls_ms"]) == 4 and min(r["calls_ms"]) > 0
    assert {r.get("prime") for r in records[:-1]} == {prime}
