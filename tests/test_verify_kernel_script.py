"""experiments/gpu/verify_kernel.py --smoke on the CPU: the GPU comparison of a verify window
with a one-token step (the Pallas kernel against XLA's attention) and its AR-against-verify
rounding check run end to end before device time is spent on them, and their records add up."""

from __future__ import annotations

import json

import pytest

from conftest import run_gpu_script_smoke


def test_verify_kernel_smoke(tmp_path):
  out = tmp_path / "verify_kernel.json"
  proc = run_gpu_script_smoke("verify_kernel.py", out)
  records = json.loads(out.read_text())
  assert not [r for r in records if "error" in r]
  times = [r for r in records if r["kind"] == "time"]
  assert {(r["attn_len"], r["attention"], r["window"]) for r in times} == {
      (n, a, t) for n in (256, 1024) for a, t in
      [("pallas", 1)] + [(a, t) for a in ("pallas", "xla") for t in (4, 8, 11)]}
  assert len(times) == 14
  for r in times:
    assert r["context"] == r["attn_len"] - 11  # the longest window ends at the bucket's end
    step = next(s for s in times if s["attn_len"] == r["attn_len"] and s["window"] == 1)
    assert r["ms_per_forward"] > 0 and r["kernels_per_body"] > 0
    assert r["over_step"] == pytest.approx(r["ms_per_forward"] / step["ms_per_forward"])
  [check] = [r for r in records if r["kind"] == "round_alike"]
  assert (check["model"], check["window"], check["attn_len"]) == ("tiny", 11, 256)
  # float32 on the CPU: the window and the one-token forwards agree to rounding, if not in bits
  assert check["kernel"]["max_abs_diff"] <= 1e-5
  assert check["logits"]["max_abs_diff"] <= 1e-3 and check["argmax_equal"]
  assert 0 <= check["positions_identical"] <= 11
  assert "AR vs verify T=11" in proc.stdout and "/step" in proc.stdout
