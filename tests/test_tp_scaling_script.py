"""experiments/gpu/tp_scaling.py --smoke on the CPU (8 virtual devices): issue 17's tensor-parallel
measurements run end to end before a multi-GPU machine's time is spent on them, and what they
report about the split model agrees with a count by hand of the tiny shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_gpu_script_smoke
from knapspec_jax.latency import LatencyProfile

# The smoke shape: shapes.SHAPES["tiny"] with 4 layers (qwen2: q/k/v biases, tied embedding).
D, F, HD, HEADS, KV, VOCAB, LAYERS = 64, 128, 32, 4, 2, 256, 4


def hand_count_bytes(tp: int, context: int) -> int:
  """What one device reads per step, float32: every matrix and bias split over tp (query heads,
  KV heads while tp divides them, MLP columns, vocabulary), norms whole, and the KV cache's
  heads split where the KV projections are."""
  kv_split = tp if KV % tp == 0 else 1
  q = D * HEADS * HD // tp + HEADS * HD // tp  # wq, bq
  kv = 2 * (D * KV * HD + KV * HD) // kv_split  # wk, wv, bk, bv
  o = HEADS * HD * D // tp
  mlp = 3 * D * F // tp
  norms = 2 * D
  layer = q + kv + o + mlp + norms
  weights = LAYERS * layer + VOCAB * D // tp + D  # tied embedding (the LM head) and final norm
  cache = 2 * LAYERS * context * KV * HD // kv_split
  return 4 * (weights + cache)


def test_tp_scaling_smoke(tmp_path):
  out = tmp_path / "tp_scaling.json"
  run_gpu_script_smoke("tp_scaling.py", out)
  records = json.loads(out.read_text())
  assert sorted((r["tp"], r["attn_len"]) for r in records) == [
      (tp, n) for tp in (2, 4) for n in (256, 512)]
  for r in records:
    assert r["device_step_gb"] * 1e9 == pytest.approx(hand_count_bytes(r["tp"], r["attn_len"]))
    assert r["device_gb_per_s"] == pytest.approx(r["device_step_gb"] / (r["ar_ms"] / 1e3))
    assert r["ar_ms"] > 0 and len(r["draft_ms"]) == 3 and min(r["draft_ms"].values()) > 0
    assert sorted(r["verify_over_step"]) == ["1", "4"] and r["search_ms"] > 0
    assert [c["compile_s"] > 0 for c in r["segment_compiles"]] == [True]
    # Megatron's pattern: each layer's attention and MLP outputs summed over the devices
    reduce = r["collectives"]["all-reduce"]
    assert reduce["count"] >= 2 * LAYERS and reduce["bytes"] >= 2 * LAYERS * D * 4
    profile = LatencyProfile.load(tmp_path / f"tp{r['tp']}" / "profiles" / "tiny.json")
    assert profile.model == f"synthetic-tiny tp={r['tp']} (random weights)"
  assert "| tiny | 4 | 512 |" in (tmp_path / "summary.md").read_text()
  # The profiles are project_scale.py's input (issue 17's projection)
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "project_scale.py"),
                         f"--profiles_dir={tmp_path / 'tp2' / 'profiles'}", "--contexts=256,512"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| tiny | 512 |" in proc.stdout
