"""experiments/round_cost.py: the acceptance a draft needs to equal AR inverts the expected-tokens
series, and the script reads a committed benchmark record with its profile."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import round_cost  # noqa: E402
from summarize import read_records  # noqa: E402


@pytest.mark.parametrize("gamma", [1, 2, 4, 10])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.87, 0.964])
def test_needed_alpha_inverts_the_series(gamma, alpha):
  tokens = sum(alpha ** i for i in range(gamma + 1))  # the series, written out
  assert np.isclose(round_cost.needed_alpha(gamma, tokens), alpha, atol=1e-9)
  assert round_cost.needed_alpha(gamma, gamma + 1.5) == float("inf")


def test_round_cost_reads_the_committed_qwen_run():
  run = ROOT / "results/h200_qwen/kept_drafts_rows2/results.jsonl.gz"
  profile = ROOT / ("profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2"
                    "__bfloat16.json")
  out = subprocess.run([sys.executable, str(ROOT / "experiments/round_cost.py"),
                        f"--results={run}", f"--profile={profile}"], capture_output=True,
                       text=True, check=True, cwd=ROOT).stdout
  rows = [line.split() for line in out.splitlines() if line.startswith("longdoc-2000-0")]
  windows = [w for r in read_records(run) if r["method"] == "knapspec"
             for w in r["stats"]["window_log"] if w["rounds"]]
  assert len(rows) == len(windows) == 2, out
  for row, w in zip(rows, windows):  # ms per round and gamma, from the record itself
    assert float(row[6]) == pytest.approx(1e3 * w["measured_s"] / w["rounds"], abs=0.006)
    assert int(row[4]) == w["decision"]["gamma"]
