"""experiments/gpu/round_terms.py --smoke on the CPU: the GPU check of where a speculation
round's time goes runs end to end before device time is spent on it, and its records add up."""

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
