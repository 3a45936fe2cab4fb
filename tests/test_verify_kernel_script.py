"""experiments/gpu/verify_kernel.py --smoke on the CPU: the GPU comparison of a verify window
with a one-token step (the Pallas kernel against XLA's attention) and its AR-against-verify
rounding check run end to end before device time is spent on them, and their records add up."""

from __future__ import annotations

import json

import pathlib
import sys

import jax
import pytest

from conftest import run_gpu_script_smoke

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gpu"))
import shapes  # noqa: E402


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
  for step in (r for r in times if r["window"] == 1):  # the bytes a full step reads at its
    m = shapes.random_model("tiny", 1024, smoke=True)  # context, from the shape (not the script)
    layer_kv = 2 * step["context"] * m.cfg.n_kv_heads * m.cfg.head_dim * 4  # float32 K and V
    weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(m.params))
    if not m.cfg.tie_embeddings:
      weights -= m.params["embed"].size * m.params["embed"].dtype.itemsize
    assert step["step_gb"] == pytest.approx((weights + m.cfg.n_layers * layer_kv) / 1e9)
    assert step["gb_per_s"] == pytest.approx(step["step_gb"] / step["ms_per_forward"] * 1e3)
    assert step["read_gbps"] > 0
    assert step["bandwidth_fraction"] == pytest.approx(step["gb_per_s"] / step["read_gbps"])
  assert all("step_gb" not in r for r in times if r["window"] > 1)
  [check] = [r for r in records if r["kind"] == "round_alike"]
  assert (check["model"], check["window"], check["attn_len"]) == ("tiny", 11, 256)
  # float32 on the CPU: the window and the one-token forwards agree to rounding, if not in bits
  assert check["kernel"]["max_abs_diff"] <= 1e-5
  assert check["logits"]["max_abs_diff"] <= 1e-3 and check["argmax_equal"]
  assert 0 <= check["positions_identical"] <= 11
  assert "AR vs verify T=11" in proc.stdout and "/step" in proc.stdout


def test_kernel_split_sweep_smoke(tmp_path):
  """kernel_split_sweep.py --smoke: every (T, split) timed once, the partial bytes from the
  shape's heads (not the script's arithmetic alone), and splits that do not divide the cache
  agree with splits of 256."""
  out = tmp_path / "kernel_split.json"
  run_gpu_script_smoke("kernel_split_sweep.py", out, "--splits=256,1024", "--windows=1,11",
                       "--stages=2,3")
  records = json.loads(out.read_text())
  [check] = [r for r in records if r["kind"] == "check"]
  assert check["finite"] and check["max_abs_diff"] <= 1e-5  # float32 on the CPU
  times = [r for r in records if r["kind"] == "time"]
  # Warps beside the default at the largest T, then stages beside the default (2) there.
  assert sorted((r["window"], r["split"], r["warps"], r["stages"]) for r in times) == sorted([
      (1, 256, 4, 2), (1, 1024, 4, 2), (11, 256, 4, 2), (11, 1024, 4, 2), (11, 256, 8, 2),
      (11, 1024, 8, 2), (11, 256, 4, 3), (11, 1024, 4, 3)])
  cfg = shapes.SHAPES["tiny"]
  for r in times:
    assert r["splits"] == 1024 // r["split"] and r["programs"] == r["splits"] * cfg.n_kv_heads
    rows = 16 if r["window"] == 1 else 32  # 11 queries x 2 heads -> 32 rows
    assert r["rows"] == rows
    assert r["partial_mb"] == pytest.approx(
        8 * cfg.n_kv_heads * r["splits"] * rows * (cfg.head_dim + 2) / 1e6)
    assert r["us_per_call"] > 0
