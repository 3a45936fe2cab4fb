"""The experiments layer end to end: `experiments/benchmark.py --config=configs/tiny.py` as a
user runs it (absl flags, a config override from the command line), checked against
transformers' own greedy generation and for complete outputs (JSONL, table, readable plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from conftest import DATA_DIR, REPO

BENCHMARK = [sys.executable, str(REPO / "experiments" / "benchmark.py")]


def _run(args, timeout=300):
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  return subprocess.run(BENCHMARK + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_tiny_config_end_to_end(tmp_path, smol_hf, smol_jax, hf_greedy):
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}",
               "--config.max_new_tokens=6"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[prompt 1/1]" in proc.stdout and "tok/s" in proc.stdout  # progress lines

  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["method"] for r in rows] == ["ar", "knapspec", "fixed"]
  question = next(json.loads(line)["turns"][0]
                  for line in (DATA_DIR / "spec_bench_question.jsonl").read_text().splitlines()
                  if json.loads(line)["category"] == "writing")
  expected = hf_greedy(smol_hf, rows[0]["prompt_ids"], 6)
  for r in rows:
    assert r["prompt_ids"] == rows[0]["prompt_ids"]
    assert r["output_ids"] == expected, r["method"]  # every method, lossless against HF
    assert r["new_tokens"] == 6 and r["tokens_per_s"] > 0 and r["decode_s"] > 0
    assert r["identical_to_ar"] and r["speedup"] == pytest.approx(
        r["tokens_per_s"] / rows[0]["tokens_per_s"])
    assert "decisions" in r["stats"] or r["method"] == "ar"
  assert question[:60] in smol_jax.tokenizer.decode(rows[0]["prompt_ids"])  # Spec-Bench writing

  table = (out / "table.md").read_text()
  for method in ("ar", "knapspec", "fixed"):
    assert f"| {method} |" in table
  assert json.loads((out / "config.json").read_text())["max_new_tokens"] == 6
  for name in ("speedup.png", "speed_vs_context.png"):
    image = matplotlib.image.imread(out / "plots" / name)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_unknown_method_is_named(tmp_path):
  proc = _run(["--config=configs/tiny.py", "--config.methods=ar,knapsack",
               f"--config.output_dir={tmp_path}"], timeout=120)
  assert proc.returncode != 0
  assert "unknown methods ['knapsack']" in proc.stderr
