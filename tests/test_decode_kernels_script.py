"""experiments/gpu/decode_kernels.py --smoke on the CPU: the GPU check runs end to end (every
variant and the verify, JSON records with bandwidth and kernel counts) before GPU time is spent
on it."""

from __future__ import annotations

import json

import pytest

from conftest import run_gpu_script_smoke


def test_decode_kernels_smoke(tmp_path):
  out = tmp_path / "kernels.json"
  proc = run_gpu_script_smoke("decode_kernels.py", out)
  result = json.loads(out.read_text())
  records = result["records"]
  assert not [r for r in records if "error" in r]
  runs = {(r["attn_len"], r["variant"], r["window"]) for r in records}
  assert runs == {(n, v, t) for n in (256, 1024) for v, t in
                  [("xla", 1), ("pallas", 1), ("pallas_whole", 1), ("xla", 4)]}
  for r in records:
    assert r["context"] == r["attn_len"] - 4  # the bucket's last positions
    assert r["ms_per_forward"] > 0 and r["kernels_per_step"] > 0
    assert r["gb_per_s"] == pytest.approx(r["step_gb"] * 1e3 / r["ms_per_forward"])
    assert r["bandwidth_fraction"] == pytest.approx(r["gb_per_s"] / result["read_gbps"])
    if r["window"] == 4:
      assert r["verify_over_pallas_step"] > 0 and r["verify_over_xla_step"] > 0
  assert "ms/token" in proc.stdout and "GB/s" in proc.stdout
