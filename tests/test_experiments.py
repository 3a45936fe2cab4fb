"""The experiments layer end to end: `experiments/benchmark.py --config=configs/tiny.py` as a
user runs it (absl flags, a config override from the command line), checked against
transformers' own greedy generation and for complete outputs (JSONL, table, readable plots)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

import matplotlib.image
import numpy as np
import pytest
import safetensors.torch

from conftest import DATA_DIR, REPO

BENCHMARK = [sys.executable, str(REPO / "experiments" / "benchmark.py")]


def _run(args, timeout=300):
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  return subprocess.run(BENCHMARK + args, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _script(name: str, *args, timeout=120):
  """experiments/<name> with these arguments, on the CPU with the shared data, from the repo."""
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(REPO / "experiments" / name), *map(str, args)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _gzipped_records(tmp_path, records: list[dict]):
  """The records as a gzipped results.jsonl.gz (as results/ keeps them) in tmp_path."""
  path = tmp_path / "results.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
  return path


def test_tiny_config_end_to_end(tmp_path, smol_hf, smol_jax, hf_greedy):
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}",
               "--config.max_new_tokens=6", "--config.warmup_runs=1"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[prompt 1/1]" in proc.stdout and "tok/s" in proc.stdout  # progress lines
  assert "GB/s" in proc.stdout and "ms/tok" in proc.stdout

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
    assert r["departs_at"] is None  # identical: no first differing token
    assert r["distinct_8gram_share"] == 1.0  # 6 tokens: no 8-gram can repeat
    assert r["identical_to_ar"] and r["speedup"] == pytest.approx(
        r["tokens_per_s"] / rows[0]["tokens_per_s"])
    assert r["paired_speedup"] == pytest.approx(statistics.median(  # run order, repeat by repeat
        x / a for x, a in zip(r["tokens_per_s_runs"], rows[0]["tokens_per_s_runs"])))
    assert "decisions" in r["stats"] or r["method"] == "ar"
    assert len(r["warmup_windows"]) == 1  # the untimed run's window log (None for AR)
    assert (r["warmup_windows"][0] is None) == (r["method"] == "ar")
    assert len(r["warmup_tokens_per_s"]) == 1 and r["warmup_tokens_per_s"][0] > 0
    assert len(r["timed_windows"]) == r["repeats"]
    assert all((w is None) == (r["method"] == "ar") for w in r["timed_windows"])
    # bandwidth: a SmolLM2 step reads its 135M f32 weights (more than 0.5 GB) and the cache
    assert r["step_gb"] > 0.5 and r["read_gbps"] > 0
    assert r["gb_per_s"] == pytest.approx(r["step_gb"] * r["tokens_per_s"])
    assert r["bandwidth_fraction"] == pytest.approx(r["gb_per_s"] / r["read_gbps"])
  assert question[:60] in smol_jax.tokenizer.decode(rows[0]["prompt_ids"])  # Spec-Bench writing

  table = (out / "table.md").read_text()
  for method in ("ar", "knapspec", "fixed"):
    assert f"| {method} |" in table
  assert json.loads((out / "config.json").read_text())["max_new_tokens"] == 6
  for name in ("speedup.png", "speed_vs_context.png"):
    image = matplotlib.image.imread(out / "plots" / name)
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_the_benchmark_runs_long_documents_documents_of_each_length(tmp_path):
  """--config.long_documents=2: two documents of the length, the first as before, the next
  another (datasets.long_documents)."""
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}", "--config.methods=ar",
               "--config.specbench_per_category=0", "--config.long_lengths=400",
               "--config.long_documents=2", "--config.max_new_tokens=2", "--config.plots=False"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["item_id"] for r in rows][0] == "longdoc-400-0"
  assert len(rows) == 2 and rows[1]["item_id"].startswith("longdoc-400-")
  assert rows[1]["item_id"] != "longdoc-400-0" and rows[0]["prompt_ids"] != rows[1]["prompt_ids"]


def test_an_over_long_prompt_stops_the_run_before_any_prompt_runs(tmp_path):
  """Every prompt is checked against the model's context before the first one runs: a document
  longer than SmolLM2's 8192 positions, listed after a short one, is named at the start."""
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}", "--config.methods=ar",
               "--config.specbench_per_category=0", "--config.long_lengths=400,9000",
               "--config.max_new_tokens=2", "--config.plots=False"])
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "benchmark.py: prompt longdoc-9000-0: the prompt has" in proc.stderr
  assert "model's context is 8192" in proc.stderr and "Traceback" not in proc.stderr
  assert not (out / "results.jsonl").exists()


def test_the_table_is_written_after_each_prompt(tmp_path):
  """A run killed after its first prompt (BENCH_TIMEOUT on a GPU machine) leaves that prompt's
  table: table.md appears while the second prompt still runs, holding the first prompt only."""
  out = tmp_path / "run"
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  with open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(
        BENCHMARK + ["--config=configs/tiny.py", f"--config.output_dir={out}",
                     "--config.methods=ar", "--config.specbench_per_category=0",
                     "--config.long_lengths=300,2000", "--config.max_new_tokens=2",
                     "--config.plots=False"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
      for line in proc.stdout:
        if line.startswith("[prompt 1/2]"):
          break
      deadline = time.time() + 60
      while not (out / "table.md").exists() and time.time() < deadline:
        time.sleep(0.02)
      first = (out / "table.md").read_text()
      assert proc.poll() is None, "the run ended before its first table was read"
    finally:
      proc.kill()
      proc.wait()
  assert "| longdoc-300-0 |" in first and "longdoc-2000" not in first, first


def test_ar_alone_runs_in_a_child_process_first(tmp_path):
  """config.ar_alone: AR on the same prompts in a child process where no other method runs,
  written to <output_dir>/ar_alone/ (AR only, the same tokens as the main process's AR); every
  record of the main run gives its median speed over that AR's median, and the table says it."""
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}",
               "--config.methods=ar,fixed", "--config.max_new_tokens=6",
               "--config.ar_alone=True", "--config.plots=False"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.index("AR alone, in a child process") < proc.stdout.index("[prompt 1/1]")
  alone = [json.loads(line) for line in (out / "ar_alone" / "results.jsonl").read_text()
           .splitlines()]
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["method"] for r in alone] == ["ar"] and [r["method"] for r in rows] == ["ar", "fixed"]
  assert alone[0]["output_ids"] == rows[0]["output_ids"]
  for r in rows:
    assert r["ar_alone_tokens_per_s"] == pytest.approx(
        statistics.median(alone[0]["tokens_per_s_runs"]))
    assert r["speedup_vs_ar_alone"] == pytest.approx(
        r["tokens_per_s"] / r["ar_alone_tokens_per_s"])
  assert "x AR alone" in (out / "table.md").read_text()
  assert json.loads((out / "ar_alone" / "config.json").read_text())["ar_alone"] is False


def test_a_width_run_tables_each_method_against_ars_rerun_at_that_width(tmp_path):
  """With AR's rerun at a width (`ar-rerun.width=8`) table.md adds summarize.against_table: the
  fixed set at width 8 writes the rerun's text (the records say so, token for token) and its
  paired ratio over the rerun is the median of the run-by-run ratios of the records."""
  out = tmp_path / "run"
  proc = _run(["--config=configs/tiny.py", f"--config.output_dir={out}",
               "--config.methods=ar,fixed", "--config.max_new_tokens=6", "--config.noise_floor=True",
               "--config.method_options=ar-rerun.width=8,fixed.width=8", "--config.plots=False"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {json.loads(line)["method"]: json.loads(line)
          for line in (out / "results.jsonl").read_text().splitlines()}
  assert rows["fixed"]["output_ids"] == rows["ar-rerun"]["output_ids"]
  ratio = statistics.median(x / y for x, y in zip(rows["fixed"]["tokens_per_s_runs"],
                                                  rows["ar-rerun"]["tokens_per_s_runs"]))
  assert f"| fixed | yes | {ratio:.3f} |" in (out / "table.md").read_text()


def test_trial_confirmation_replay_reads_trial_and_first_full_window(tmp_path):
  """experiments/trial_confirmation_replay.py on a stated record: a trial of 8 rounds (20
  tokens, 0.2 s at the profile's costs) and the full window after it (100 tokens) against AR's
  predicted 100 tok/s: at 1.3 s the two make 120 tokens in 1.5 s, 0.800 of AR, dropped at the
  default 3% margin; at 1.0 s, 1.000, kept. A window of another draft after a trial, and a
  trial with no window after it, are no pair."""
  def window(tokens, predicted_s, rounds, reason, skip=(1, 0, 0, 0)):
    return dict(decision=dict(skip=list(skip), gamma=2, ar_tpt=100.0, reason=reason),
                context=40, tokens=tokens, rounds=rounds, predicted_s=predicted_s,
                measured_tokens_per_s=110.0)
  trial = lambda: window(20, 0.2, 8, "kept (not measured yet: a trial of 8 rounds)")
  full = lambda s, skip=(1, 0, 0, 0): window(100, s, 64, "kept (last window)", skip)
  records = [dict(item_id="lose", method="knapspec", warmup_windows=[],
                  timed_windows=[[trial(), full(1.3), full(1.3)], [trial()]]),
             dict(item_id="win", method="knapspec", warmup_windows=[[trial(), full(1.0)]],
                  timed_windows=[[trial(), full(1.0, skip=(0, 1, 0, 0))]]),
             dict(item_id="lose", method="ar", tokens_per_s_runs=[100.0, 102.0, 98.0])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  got = _script("trial_confirmation_replay.py", str(path))
  assert got.returncode == 0, got.stderr[-2000:]
  rows = [line for line in got.stdout.splitlines() if "| lose |" in line or "| win |" in line]
  assert len(rows) == 2, got.stdout
  assert "| lose | 40 | 20, 100 | 100, 77 | 0.800 | drop | 110, 110 | 100 |" in rows[0], rows
  assert "| win | 40 | 20, 100 | 100, 100 | 1.000 | keep | 110 | – |" in rows[1], rows


def test_window_analyses_read_the_recorded_windows(tmp_path):
  """experiments/judged_windows.py and window_prediction.py on a stated record: two 64-round
  windows of one draft at 110 and 90 tok/s (100 tokens each: 99.0 tok/s together) against AR
  runs at 100 tok/s are dropped at a 2% margin; at 104 and 106 (105.0) kept. The Pearson r and
  the profile's error equal numpy's over the same windows; trials, plain and short windows are
  left out. The record is gzipped, as results/ keeps large ones."""
  def window(context, tpt, measured, predicted_s=1.0, rounds=64, gamma=2, reason="kept"):
    return dict(decision=dict(skip=[1, 0, 0, 0], gamma=gamma, predicted_tpt=tpt, reason=reason,
                              n_attn_skipped=1, n_mlp_skipped=0, context=context),
                context=context, tokens=100, rounds=rounds, predicted_s=predicted_s,
                measured_tokens_per_s=measured)
  def record(item, windows):
    return dict(item_id=item, method="knapspec", warmup_windows=[], timed_windows=[windows])
  ar = lambda item: dict(item_id=item, method="ar", warmup_tokens_per_s=[100.0],
                         tokens_per_s_runs=[100.0, 100.0], timed_windows=[None])
  windows = {"lose": [window(40, 120.0, 110.0), window(140, 115.0, 90.0, predicted_s=0.9)],
             "win": [window(40, 130.0, 104.0, predicted_s=0.95), window(140, 125.0, 106.0)]}
  extra = [window(240, 99.0, 50.0, reason="kept (not measured yet: a trial of 8 rounds)"),
           window(240, 99.0, 50.0, gamma=0), window(240, 99.0, 50.0, rounds=8)]
  # Gzipped, as results/ keeps large records; each script is named the other file name.
  path = tmp_path / "results.jsonl"
  with gzip.open(tmp_path / "results.jsonl.gz", "wt") as f:
    f.write("".join(json.dumps(r) + "\n" for item in windows
                    for r in (ar(item), record(item, windows[item] + extra))))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  judged = subprocess.run([sys.executable, str(REPO / "experiments" / "judged_windows.py"),
                           str(path)], capture_output=True, text=True, env=env, timeout=120)
  assert judged.returncode == 0, judged.stderr[-2000:]
  assert "| lose | 256 | 1 + 0, 2 | 110, 90 | 99 | 100 | 0.990 | drop |" in judged.stdout
  assert "| win | 256 | 1 + 0, 2 | 104, 106 | 105 | 100 | 1.050 | keep |" in judged.stdout
  png = tmp_path / "prediction.png"
  predicted = subprocess.run([sys.executable, str(REPO / "experiments" / "window_prediction.py"),
                              f"{path}.gz", f"--plot={png}", "--title=stated windows"],
                             capture_output=True, text=True, env=env, timeout=120)
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in predicted.stdout
  kept = windows["lose"] + windows["win"]
  measured = [w["measured_tokens_per_s"] for w in kept]
  r_tpt = np.corrcoef([w["decision"]["predicted_tpt"] for w in kept], measured)[0, 1]
  ran = [w["tokens"] / w["predicted_s"] for w in kept]
  r_ran = np.corrcoef(ran, measured)[0, 1]
  error = statistics.median(abs(x / m - 1) for x, m in zip(ran, measured))
  assert (f"| knapspec | 4 | 2 | {r_tpt:.3f} | {r_ran:.3f} | {error:.1%} |"
          in predicted.stdout), predicted.stdout


def test_window_prediction_times_old_windows_with_another_profile(tmp_path):
  """window_prediction.py --profile: each window's seconds at that profile's costs, worked out
  here by hand for a 2-layer model (a step: fixed + attention + MLP sublayers; a verify of gamma
  + 1 tokens: a full step + gamma x the per-token excess; one call per window), against its
  measured speed."""
  from knapspec_jax.latency import LatencyProfile
  c0, t_attn, t_mlp, v0, call = 1e-3, 2e-3, 3e-3, 5e-4, 0.01
  profile = LatencyProfile("dev", "m", "float32", 2, c0, t_attn, 0.0, t_mlp, v0, 0.0,
                           call_s=call)
  profile_path = profile.save(tmp_path / "profile.json")
  def window(context, forwards, rounds, measured, gamma=2):
    return dict(decision=dict(skip=[1, 0, 0, 0], gamma=gamma, alpha=0.8, predicted_tpt=100.0,
                              ar_tpt=90.0, best_tpt=100.0, context=context, reason="kept"),
                context=context, tokens=100, rounds=rounds, draft_forwards=forwards,
                ar_tokens_while_compiling=0, predicted_s=1.0, measured_tokens_per_s=measured)
  windows = [window(40, 80, 32, 104.0), window(1500, 60, 20, 98.0, gamma=3),
             window(3000, 90, 40, 120.0)]
  path = tmp_path / "results.jsonl"
  path.write_text(json.dumps(dict(item_id="doc", method="knapspec", warmup_windows=[],
                                  timed_windows=[windows])) + "\n")
  full = c0 + 2 * t_attn + 2 * t_mlp
  draft = c0 + 1 * t_attn + 2 * t_mlp  # layer 0's attention skipped
  seconds = [w["draft_forwards"] * draft + w["rounds"] * (full + w["decision"]["gamma"] * v0)
             + call for w in windows]
  ran = [w["tokens"] / s for w, s in zip(windows, seconds)]
  measured = [w["measured_tokens_per_s"] for w in windows]
  error = statistics.median(abs(x / m - 1) for x, m in zip(ran, measured))
  r_ran = np.corrcoef(ran, measured)[0, 1]
  out = _script("window_prediction.py", f"--profile={profile_path}", "--min_rounds=16", str(path))
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"| knapspec | 3 | 1 | nan | {r_ran:.3f} | {error:.1%} |" in out.stdout, out.stdout


def test_edge_windows_counts_the_windows_that_run_in_the_next_buckets_program(tmp_path):
  """experiments/edge_windows.py on stated windows (bucket 256 ends at context 256): gamma 2 at
  253 (its round reaches 256) is inside, at 254 and 256 at the edge (256 also at the end), a
  plain window at 256 at the end only; at width 11, 253 is at the edge too and 245 is not. The
  warm-up's window (255) counts unless --timed_only; other methods' windows never."""
  def window(context, tokens, gamma=2, rounds=8):
    return dict(decision=dict(gamma=gamma), context=context, tokens=tokens, rounds=rounds)
  timed = [window(253, 10), window(254, 30), window(256, 20), window(256, 5, gamma=0, rounds=0),
           window(245, 40)]
  records = [dict(method="knapspec", warmup_windows=[[window(255, 100)]], timed_windows=[timed]),
             dict(method="fixed", warmup_windows=[], timed_windows=[[window(255, 7)]])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  def run(*flags):
    got = _script("edge_windows.py", *flags, path)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout
  # drafting: 5 windows of 200 tokens; at the edge 255 (100), 254 (30), 256 (20): 75%
  assert f"| {path} | 6 | 2 | 5 | 3 | 75.0% | 100 tokens from 255 |" in run()
  assert f"| {path} | 5 | 2 | 4 | 2 | 50.0% | 30 tokens from 254 |" in run("--timed_only")
  assert f"| {path} | 6 | 2 | 5 | 4 | 80.0% | 100 tokens from 255 |" in run("--width=11")


def test_bucket_end_windows_judges_each_window_to_a_bucket_end_alone(tmp_path):
  """experiments/bucket_end_windows.py on stated windows: of the knapspec record's windows whose
  reason ends "to the bucket's end", those of 32+ rounds (half the default interval) are judged,
  each against the AR its reason names (1089 tok/s against 1127 loses, 1160 keeps), else the
  median of the prompt's AR runs (100 against 101, marked *: loses by the 2% margin, keeps at
  --keep_margin=-0.02); a 20-round one counts from --min_rounds=16; windows of other reasons
  and of other methods never."""
  named = "kept (chosen at context 69; last window 1 tok/s, AR predicted 1133, measured 1127; "
  def window(reason, rounds, speed):
    return dict(decision=dict(gamma=10, reason=reason), context=64, tokens=127, rounds=rounds,
                measured_tokens_per_s=speed)
  windows = [window(named + "to the bucket's end)", 51, 1089.0),
             window(named + "to the bucket's end)", 51, 1160.0),
             window(named + "to the bucket's end)", 20, 1.0),
             window("kept (chosen at context 69; AR predicted 1133; to the bucket's end)", 40,
                    100.0),
             window(named.rstrip("; ") + ")", 64, 1.0)]
  records = [dict(item_id="p", method="ar", tokens_per_s_runs=[100.0, 102.0, 101.0]),
             dict(item_id="p", method="knapspec", warmup_windows=[windows[:2]],
                  timed_windows=[windows[2:]]),
             dict(item_id="p", method="fixed", timed_windows=[windows])]
  path = _gzipped_records(tmp_path, records)
  def run(*flags):
    got = _script("bucket_end_windows.py", *flags, path)
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout
  out = run()
  assert f"| {path} | 4 | 3 | 2 |" in out, out
  assert f"| {path} | p | 64 | 51 | 127 | 1089 | 1127 | 0.966 |" in out, out
  assert f"| {path} | p | 64 | 40 | 127 | 100 | 101* | 0.990 |" in out, out
  assert f"| {path} | 4 | 3 | 1 |" in run("--keep_margin=-0.02")
  assert f"| {path} | 4 | 4 | 3 |" in run("--min_rounds=16")


def test_window_log_lists_every_window_of_the_method_asked(tmp_path):
  """experiments/window_log.py on stated records: one line per window of the method's warm-up
  and timed runs (prompt filter honoured, other methods left out), with the window's own counts,
  its measured speed and its tokens over the profile's wall seconds for it."""
  def window(context, tokens, measured, wall):
    return dict(decision=dict(skip=None, gamma=0, n_attn_skipped=0, n_mlp_skipped=0,
                              reason="why " + str(context)),
                context=context, tokens=tokens, rounds=0, drafted=0, accepted=0,
                ar_tokens_while_compiling=7, measured_tokens_per_s=measured, search_s=0.5,
                compile_s=0.0, predicted_s=wall - 0.01, predicted_wall_s=wall)
  rows = [dict(item_id="doc-16000", prompt_tokens=16000, method="knapspec",
               tokens_per_s_all=[1.0], paired_speedup=1.1,
               warmup_windows=[[window(16000, 100, 500.0, 0.25)]],
               timed_windows=[[window(16100, 200, 600.0, 0.4), window(16300, 50, 550.0, 0.125)]]),
          dict(item_id="doc-2000", prompt_tokens=2000, method="knapspec", tokens_per_s_all=[1.0],
               warmup_windows=[[window(2000, 10, 1.0, 1.0)]], timed_windows=[]),
          dict(item_id="doc-16000", prompt_tokens=16000, method="clasp", tokens_per_s_all=[1.0],
               warmup_windows=[[window(9, 10, 1.0, 1.0)]], timed_windows=[])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = _script("window_log.py", "--prompt=16000", str(path))
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert len(lines) == 4 and lines[0].startswith("doc-16000 (16000 prompt tokens)"), lines
  assert [line.split()[0] for line in lines[1:]] == ["W0", "T0", "T0"]
  for line, (context, tokens, measured, wall) in zip(lines[1:], [(16000, 100, 500.0, 0.25),
                                                                 (16100, 200, 600.0, 0.4),
                                                                 (16300, 50, 550.0, 0.125)]):
    assert f"ctx {context:6d} tokens {tokens:4d}" in line
    assert f"{measured:6.1f} tok/s, profile {tokens / wall:6.1f}" in line
    assert "plain-while-compiling    7" in line and line.endswith(f"why {context}")
    assert "host" not in line  # records before session 31 have no host_s
  rows[0]["timed_windows"][0][0].update(host_s=0.00125, read_s=0.0005)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = _script("window_log.py", "--prompt=16000", str(path))
  assert "compile 0.00 s host 1.25 ms (read 0.50) |" in out.stdout.splitlines()[2], out.stdout


def test_host_between_windows_against_hand_counts(tmp_path):
  """experiments/host_between_windows.py on stated records: a timed run's gap is its decode
  time (new tokens over tokens/s) less its windows' measured, search and compile seconds; the
  table groups runs by window count, the line through them is worked out by hand, recorded
  host_s is summed per run where every window has it, and AR's records are left out."""
  def win(measured, search=0.0, compile_s=0.0, host=None):
    w = dict(measured_s=measured, search_s=search, compile_s=compile_s)
    return w if host is None else dict(w, host_s=host)
  # 100 tokens at 50 tok/s: 2 s. One window: gap 2 - 1.99 = 10 ms; three: 2 - 1.97 = 30 ms.
  recs = [dict(method="knapspec", new_tokens=100, tokens_per_s_runs=[50.0, 50.0],
               timed_windows=[[win(1.98, 0.01)],
                              [win(0.9, host=0.004), win(0.5, 0.0, 0.07, 0.005), win(0.5)]]),
          dict(method="fixed", new_tokens=100, tokens_per_s_runs=[50.0],
               timed_windows=[[win(0.99, host=0.002), win(0.98, host=0.003)]]),
          dict(method="ar", new_tokens=100, tokens_per_s_runs=[10.0], timed_windows=[None])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  out = _script("host_between_windows.py", str(path))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| 1 | 1 | 10.0 | 10.0-10.0 | – |" in out.stdout, out.stdout
  assert "| 2 | 1 | 30.0 | 30.0-30.0 | 5.0 |" in out.stdout, out.stdout
  assert "| 3 | 1 | 30.0 | 30.0-30.0 | – |" in out.stdout, out.stdout  # one window has no host_s
  # points (1, 10), (2, 30), (3, 30): slope 10, intercept 3.33
  assert "gap = 3.33 ms + 10.000 ms x windows" in out.stdout, out.stdout


def test_draft_headroom_against_the_closed_form(tmp_path):
  """experiments/draft_headroom.py on a stated record, against the paper's closed form computed
  here from the committed H200 Qwen profile's step and verify times: tokens per round
  1 + a + ... + a^gamma over gamma draft steps and one verify, times AR's step; the acceptance
  for the target is the smallest on the grid whose best gamma reaches it. A draft the
  confidence exit ended early is reported, not predicted. The second table, the rounds as they
  ran, holds for both: its ratios from the windows' stated seconds and AR's step at 16384."""
  from knapspec_jax.latency import LatencyProfile
  from knapspec_jax.skip_mask import SkipMask
  profile_path = REPO / ("profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
                         "_pallas_rows2_pallas_windows__bfloat16.json")
  profile = LatencyProfile.load(profile_path)
  skip = SkipMask.from_layers(28, attn=range(4, 20, 2), mlp=range(5, 21, 2))
  def window(context, accepted, forwards, gamma=2, predicted=0.2, measured=0.21):
    return dict(decision=dict(skip=[int(x) for x in skip.skip], gamma=gamma, alpha=0.8),
                context=context, rounds=64, drafted=100, accepted=accepted,
                draft_forwards=forwards, tokens=64 + accepted, predicted_s=predicted - 0.001,
                predicted_wall_s=predicted, measured_s=measured)
  records = [dict(item_id="steady", method="knapspec", paired_speedup=1.1,
                  timed_windows=[[window(15976, 92, 120), window(16100, 92, 120)]]),
             dict(item_id="cut", method="knapspec", paired_speedup=1.0,
                  timed_windows=[[window(15976, 70, 64)]]),
             dict(item_id="steady", method="ar", timed_windows=[None])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = _script("draft_headroom.py", f"--profile={profile_path}", "--target=1.1", str(path))
  assert out.returncode == 0, out.stderr[-2000:]
  attn_len = 16384  # contexts 15976 and 16100 plus a round of 3 positions
  def closed_form(a, gamma):
    tokens = sum(a ** i for i in range(gamma + 1))
    seconds = gamma * profile.t_step(skip, attn_len) + profile.t_verify(gamma + 1, attn_len)
    return tokens / seconds * profile.t_step(None, attn_len)
  best = lambda a: max((closed_form(a, g), g) for g in range(1, 11))
  top, top_gamma = best(0.92)
  grid = np.round(np.arange(0.5, 1.0001, 0.005), 3)
  needed = next(a for a in grid if best(a)[0] >= 1.1)
  row = (f"| steady | 8 + 8, 2 | {attn_len} | 0.80 | 0.920 | 1.88 | 1.100 | "
         f"{closed_form(0.92, 2):.3f} | {top_gamma}, {top:.3f} | {needed:.3f} |")
  assert row in out.stdout, out.stdout
  assert "| cut | 8 + 8, 2 | 16384 | 0.80 | 0.700 | 1.00 | 1.000 | the exit ended drafts early" \
      in out.stdout, out.stdout
  step = profile.t_step(None, attn_len)
  assert (f"| steady | {156 / 64:.2f} | 1.88 | {2 * 156 * step / 0.4:.3f} | {0.42 / 0.4:.3f} "
          f"| 1.100 | {1.1 * 0.4 / (128 * step):.2f} |") in out.stdout, out.stdout
  assert (f"| cut | {134 / 64:.2f} | 1.00 | {134 * step / 0.2:.3f} | 1.050 | 1.000 "
          f"| {1.1 * 0.2 / (64 * step):.2f} |") in out.stdout, out.stdout


def test_departs_at_and_the_table_say_where_a_text_left_ars():
  """metrics.departs_at against a plain loop over the pairs; the speed table names the token."""
  from experiments import summarize
  from knapspec_jax import metrics
  rng = np.random.default_rng(3)
  for _ in range(200):
    a = rng.integers(0, 3, size=int(rng.integers(0, 8))).tolist()
    b = rng.integers(0, 3, size=int(rng.integers(0, 8))).tolist()
    want = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if want is None and len(a) != len(b):
      want = min(len(a), len(b))
    assert metrics.departs_at(a, b) == want
    assert metrics.departs_at(a, a) is None
  row = dict(item_id="doc", prompt_tokens=9, method="knapspec", tokens_per_s=2.0, speedup=1.2,
             paired_speedup=1.1, identical_to_ar=False, departs_at=3)
  assert "≠AR from token 3" in summarize.speed_table([row])
  assert "≠AR |" in summarize.speed_table([{**row, "departs_at": None}])  # an old record


def test_distinct_share_counts_ngrams_as_a_set_of_tuples_would_and_the_table_shows_both_texts():
  """metrics.distinct_share against Python's own set of n-gram tuples over the last `tail`
  tokens (random short outputs over 3 token ids, so repeats are common); a loop of period 2 has
  2 distinct bigrams; too short an output cannot repeat. The speed table gives a departed
  output's share beside AR's, and nothing where a record predates the field."""
  from experiments import summarize
  from knapspec_jax import metrics
  rng = np.random.default_rng(4)
  for _ in range(300):
    ids = rng.integers(0, 3, size=int(rng.integers(0, 30))).tolist()
    n, tail = int(rng.integers(1, 5)), int(rng.integers(1, 30))
    last = ids[-tail:]
    grams = [tuple(last[i:i + n]) for i in range(len(last) - n + 1)]
    want = len(set(grams)) / len(grams) if len(last) > n else 1.0
    assert metrics.distinct_share(ids, n, tail) == pytest.approx(want), (ids, n, tail)
  assert metrics.distinct_share([5, 7] * 20, n=2, tail=40) == pytest.approx(2 / 39)
  with pytest.raises(ValueError, match="must be positive"):
    metrics.distinct_share([1, 2, 3], n=0)
  ar = dict(item_id="doc", prompt_tokens=9, method="ar", tokens_per_s=1.0, speedup=1.0,
            identical_to_ar=True, departs_at=None, distinct_8gram_share=0.37)
  loop = dict(ar, method="knapspec", tokens_per_s=1.5, speedup=1.5, identical_to_ar=False,
              departs_at=75, distinct_8gram_share=0.0)
  assert ("≠AR from token 75, 8-grams 0.00 distinct, AR's 0.37"
          in summarize.speed_table([ar, loop]))
  old = {k: v for k, v in loop.items() if k != "distinct_8gram_share"}
  assert "≠AR from token 75 |" in summarize.speed_table([ar, old])


def test_spread_lists_each_runs_paired_speedup_and_where_the_text_left(tmp_path):
  """experiments/spread.py over two stated runs (a folder with results.jsonl.gz, and a file):
  each run's paired speedup in order, their median and range, AR's tokens/s per run, and where
  the text left AR's: the record's departs_at, or computed from the output tokens for a record
  from before the field."""
  def rec(item, method, tps, paired, out, **extra):
    return dict(item_id=item, prompt_tokens=10, method=method, tokens_per_s=tps,
                paired_speedup=paired, identical_to_ar=out == [1, 2, 3, 4], output_ids=out,
                **extra)
  first = tmp_path / "first"
  first.mkdir()
  with gzip.open(first / "results.jsonl.gz", "wt") as f:
    for r in (rec("doc", "ar", 100.0, 1.0, [1, 2, 3, 4]),
              rec("doc", "knapspec", 120.0, 1.2, [1, 2, 9, 4])):  # no departs_at: token 2
      f.write(json.dumps(r) + "\n")
  second = tmp_path / "second.jsonl"
  second.write_text("".join(json.dumps(r) + "\n" for r in (
      rec("doc", "ar", 110.0, 1.0, [1, 2, 3, 4]),
      rec("doc", "knapspec", 110.0, 1.0, [1, 2, 3, 4], departs_at=None),
      rec("doc", "clasp", 99.0, 0.9, [1, 2, 3, 4]))))
  out = _script("spread.py", "--method=knapspec", str(first), str(second))
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [line for line in out.stdout.splitlines() if line.startswith("| doc")]
  assert lines == ["| doc | 10 | knapspec | 2 | 1.200, 1.000 | 1.100 | 1.000-1.200 | "
                   "100.0, 110.0 | 2, - |"]


def test_unknown_method_is_named(tmp_path):
  proc = _run(["--config=configs/tiny.py", "--config.methods=ar,knapsack",
               f"--config.output_dir={tmp_path}"], timeout=120)
  assert proc.returncode != 0
  assert "unknown methods ['knapsack']" in proc.stderr


def test_method_options_parse_as_the_configs_write_them():
  """experiments/common.method_options, which benchmark.py (a config string) and
  same_process_slowdown.py (an absl list) share: JSON values where they parse, else strings."""
  sys.path.insert(0, str(REPO / "experiments"))
  import common
  want = {"knapspec": {"interval": 32, "search_new_buckets": True, "threshold": 0.5},
          "clasp": {"note": "abc"}}
  spec = ("knapspec.interval=32, knapspec.search_new_buckets=true,knapspec.threshold=0.5,"
          "clasp.note=abc")
  assert common.method_options(spec) == want
  assert common.method_options(spec.split(",")) == want
  assert common.method_options("") == common.method_options([]) == {}
  for bad in ("knapspec.interval", "interval=3"):
    with pytest.raises(ValueError, match="is not method.field=value"):
      common.method_options(bad)


def _project_scale():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "project_scale", REPO / "experiments" / "project_scale.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_projection_follows_the_tpt_formula():
  """experiments/project_scale.py's best draft against the TPT formula worked out by hand."""
  from knapspec_jax.latency import LatencyProfile
  ps = _project_scale()
  ms = 1e-3
  p = LatencyProfile("test", "m", "float32", n_layers=10, c0=ms, a0=ms, a1=0.0, m=ms, v0=0.0,
                     v1=0.0)
  t_full, t_draft = 21 * ms, 5 * ms  # 1 + 10 + 10 ms; 1 + 2 + 2 ms with 8 + 8 of 20 skipped
  # alpha = 1: skip all 16 skippable sublayers (first and last layer kept), gamma 10, and a
  # verify of 11 tokens that costs one step (v0 = v1 = 0): 11 tokens per 10 drafts + 1 verify.
  best = ps.best_draft(p, 1024, ps.alpha_curve({"b_attn": 0.0, "b_mlp": 0.0}, 1.0), 64)
  assert (best["n_attn_skipped"], best["n_mlp_skipped"], best["gamma"]) == (8, 8, 10)
  assert best["speedup"] == pytest.approx(11 * t_full / (10 * t_draft + t_full))
  # A search of 50 ms every 64 rounds is paid from the same rounds.
  slow = dataclasses.replace(p, search_c0=0.05)
  best = ps.best_draft(slow, 1024, ps.alpha_curve({"b_attn": 0.0, "b_mlp": 0.0}, 1.0), 64)
  assert best["speedup"] == pytest.approx(
      64 * 11 * t_full / (64 * (10 * t_draft + t_full) + 0.05))
  # Acceptance near zero: no draft beats AR and the projection declines, as KnapSpec does.
  best = ps.best_draft(p, 1024, ps.alpha_curve({"b_attn": 60.0, "b_mlp": 60.0}, 1.0), 64)
  assert best.get("declined") and best["speedup"] == 1.0
  # Calibration finds the curve steepness that gives a target speedup.
  k = ps.calibrate(p, 1024, {"b_attn": 1.0, "b_mlp": 1.0}, 1.5, 64)
  assert ps.best_draft(p, 1024, ps.alpha_curve({"b_attn": 1.0, "b_mlp": 1.0}, k),
                       64)["speedup"] == pytest.approx(1.5, rel=1e-3)


def test_hf_reference_script_and_its_comparison(tmp_path, smol_hf, smol_jax):
  """experiments/bench_hf.py on the CPU (eager, 16 tokens, median of 3: its decode rate is the
  16-token time less the 1-token time, which with 4 tokens and one repeat came out negative on a
  loaded CPU), on SmolLM2 as an HF checkpoint directory (transformers' model of the GGUF and
  the tokenizer, saved: transformers parses a GGUF three times, 30 s of the test's 60): a record
  per prompt with the benchmark's prompt ids, then --records/--ours prints our AR tokens/s over
  HF's for each prompt."""
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  script = [sys.executable, str(REPO / "experiments" / "bench_hf.py")]
  model_dir = tmp_path / "smollm2"
  model_dir.mkdir()  # (save_pretrained refuses a model loaded from GGUF: its quantizer)
  config = {k: v for k, v in smol_hf.config.to_dict().items() if k != "quantization_config"}
  (model_dir / "config.json").write_text(json.dumps(config))
  safetensors.torch.save_model(smol_hf, str(model_dir / "model.safetensors"))
  smol_jax.tokenizer.save_pretrained(model_dir)
  out = tmp_path / "hf.jsonl"
  bad = subprocess.run(script + [f"--model={tmp_path / 'nowhere'}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "no such file or directory" in bad.stderr
  proc = subprocess.run(script + [f"--model={model_dir}", "--modes=eager",
                                  "--specbench_per_category=0",
                                  "--long_lengths=100", "--max_new_tokens=16", "--repeats=3",
                                  "--device=cpu", "--dtype=float32", f"--output={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert rec["item_id"] == "specbench-81" and rec["mode"] == "eager"
  assert rec["prompt_tokens"] == 53 and rec["decode_tokens_per_s"] > 0  # the benchmark's prompt

  ours = tmp_path / "ours.jsonl"
  ours.write_text(json.dumps(dict(item_id="specbench-81", method="ar", prompt_tokens=53,
                                  tokens_per_s=10 * rec["decode_tokens_per_s"])) + "\n")
  proc = subprocess.run(script + [f"--records={out}", f"--ours={ours}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = next(line for line in proc.stdout.splitlines() if line.startswith("| specbench-81"))
  assert row.split("|")[5].strip() == "10.0x"
  assert "ours / HF eager: 10.0x - 10.0x, median 10.0x over 1 prompts" in proc.stdout


def test_acceptance_curve_reports_how_far_the_estimate_is_from_held_out(tmp_path):
  """acceptance_curve.py --from_jsonl prints the in-sample estimate minus held-out agreement over
  every set (numbers worked out by hand), and per prompt over the sets with 9-16 sublayers
  skipped only. (A subprocess: the script's absl flags would clash with project_scale's.)"""
  row = lambda item, skipped, est, held: dict(
      item_id=item, n_attn_skipped=skipped, n_mlp_skipped=0, f_attn=skipped / 40, f_mlp=0.0,
      in_sample_alpha=est, held_out_alpha=held, skip=[0] * 40, model="m (float32)",
      device="cpu", date="2026-12-02")
  rows = [row("a", 10, 0.9, 0.8), row("a", 2, 0.5, 0.7), row("b", 16, 0.6, 0.9)]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "acceptance_curve.py"),
                         f"--from_jsonl={path}"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # errors +0.1, -0.2, -0.3: mean -0.133, mean |error| 0.2
  assert ("in-sample estimate minus held-out alpha, 3 sets: mean -0.133, mean |error| 0.200"
          in proc.stdout), proc.stdout
  table = [line for line in proc.stdout.splitlines() if line.startswith("| a |")
           or line.startswith("| b |")]
  assert table == ["| a | 1 | 0.80 | 0.90 | +0.10 |", "| b | 1 | 0.90 | 0.60 | -0.30 |"]


def test_skip_shift_weighs_the_items_with_the_profile_it_is_given(tmp_path, smol_path):
  """experiments/skip_shift.py --model --profile: one search on SmolLM2 whose knapsack items
  weigh what the H200 profile says at that bucket (knapsack.integer_weights of its attention and
  MLP costs, worked out here from the profile file), the rows naming the model and the weights'
  device; --from_jsonl redoes the per-prompt means (by hand: 2 and 4 attention, 1 and 3 MLP
  sublayers over two searches) and the plot."""
  from knapspec_jax import decoding, knapsack
  from knapspec_jax.latency import LatencyProfile
  profile_path = REPO / "profiles" / (
      "NVIDIA_H200__SmolLM2-135M-Instruct.Q4_1.gguf_pallas_rows2_pallas_windows__bfloat16.json")
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "skip_shift.py"),
                         f"--model={smol_path}", "--max_context=1024", f"--profile={profile_path}",
                         "--lengths=100", "--searches=1", f"--output_dir={tmp_path / 'live'}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  [row] = [json.loads(line)
           for line in (tmp_path / "live" / "results.jsonl").read_text().splitlines()]
  profile = LatencyProfile.load(profile_path)
  attn_len = decoding.attn_bucket(row["context"] + 10 + 1, 1024)  # gamma_max 10, as searched
  assert row["weights"] == list(knapsack.integer_weights(profile.t_attn(attn_len), profile.t_mlp))
  assert row["weights_profile"] == "NVIDIA H200" and row["model"].endswith("(float32)")
  assert row["n_attn_skipped"] + row["n_mlp_skipped"] == sum(row["skip"])
  assert (tmp_path / "live" / "skips_vs_context.png").stat().st_size > 0

  rows = [dict(row, prompt_tokens=50, context=c, n_attn_skipped=a, n_mlp_skipped=m)
          for c, a, m in ((60, 2, 1), (76, 4, 3))]
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  redone = subprocess.run([sys.executable, str(REPO / "experiments" / "skip_shift.py"),
                           f"--from_jsonl={path}", f"--output_dir={tmp_path / 'redone'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert redone.returncode == 0, redone.stderr[-3000:]
  assert "| 50 | 60-76 | 3.0 | 2.0 | 0.60 |" in redone.stdout, redone.stdout
  assert (tmp_path / "redone" / "skips_vs_context.png").stat().st_size > 0


def test_chosen_drafts_counts_each_draft_once_where_it_was_first_chosen(tmp_path):
  """experiments/chosen_drafts.py on stated records: a draft chosen at 2000 and kept (its reason
  then naming later contexts) counts once, at 2000; another chosen at 16000 counts there; the
  same skip set in another run counts again; AR, plain and trial-free windows without a
  'chosen at' are left out. A search that borrowed a draft (its reason 'searched here') is no
  choice, and its own best (`search_best`) is a row of the second table, as is a declining
  search's. Band means worked out by hand; --plot writes a PNG."""
  def window(context, attn, mlp, gamma=2, reason=None, best=None):
    skip = [1] * attn + [0] * (8 - attn) + [1] * mlp + [0] * (8 - mlp)
    d = dict(skip=skip, gamma=gamma, n_attn_skipped=attn, n_mlp_skipped=mlp, context=context,
             reason=reason or f"kept (chosen at context {context}; ...)")
    if best:
      d["search_best"] = dict(skip=[], n_attn_skipped=best[0], n_mlp_skipped=best[1],
                              gamma=best[2])
    return dict(decision=d)
  borrowing = window(8000, 4, 4, reason="searched here: predicted 1.01x AR; ...; kept (chosen "
                     "at context 2000; ...)", best=(7, 0, 3))
  declining = window(9000, 0, 0, gamma=0, reason="declined: ...", best=(5, 1, 2))
  run_a = [dict(method="knapspec", warmup_windows=[[window(2000, 4, 4)]], timed_windows=[
               [window(2100, 4, 4), window(0, 0, 0, gamma=0, reason="no search: ...")],
               [window(16000, 6, 1, gamma=1), window(16100, 4, 4), borrowing, declining]]),
           dict(method="ar", warmup_windows=[], timed_windows=[None])]
  run_b = [dict(method="knapspec", warmup_windows=[], timed_windows=[[window(2050, 4, 4)]])]
  paths = []
  for name, recs in (("a", run_a), ("b", run_b)):
    (tmp_path / name).mkdir()
    paths.append(tmp_path / name / "results.jsonl")
    paths[-1].write_text("".join(json.dumps(r) + "\n" for r in recs))
  png = tmp_path / "chosen.png"
  proc = _script("chosen_drafts.py", *map(str, paths), f"--plot={png}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  chosen, searched = proc.stdout.split("Each search's own best")
  rows = [line for line in chosen.splitlines() if line.startswith(("| a |", "| b |"))]
  assert rows == ["| a | 2000 | 4 | 4 | 2 |", "| a | 16000 | 6 | 1 | 1 |",
                  "| b | 2050 | 4 | 4 | 2 |"]
  assert "| >= 1024 | 2 | 4.0 | 4.0 | 0.50 |" in chosen
  assert "| >= 12288 | 1 | 6.0 | 1.0 | 0.86 |" in chosen
  rows = [line for line in searched.splitlines() if line.startswith(("| a |", "| b |"))]
  assert rows == ["| a | 8000 | 7 | 0 | 3 |", "| a | 9000 | 5 | 1 | 2 |"]
  assert "| >= 4096 | 2 | 6.0 | 0.5 | 0.92 |" in searched, searched
  assert png.read_bytes()[:4] == b"\x89PNG"


def test_exit_round_check_decodes_losslessly_and_reports_both_round_models(tmp_path):
  """experiments/exit_round_check.py on SmolLM2 (f32, the H200 profile as the costs): each draft
  it decodes (the two models' best and one given set) reproduces plain decoding's tokens, and
  each row carries both models' predictions next to the decode's own counts."""
  profile = REPO / "profiles" / "NVIDIA_H200__SmolLM2-135M-Instruct.Q4_1.gguf_pallas__bfloat16.json"
  bits = [0, 0] + [0, 1] * 28 + [0, 0]  # MLP of layers 1-28 skipped
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "exit_round_check.py"),
                         f"--profile={profile}", "--prompts=specbench:0", "--held_out=12",
                         f"--extra_skip={json.dumps({'mlp': [bits, 2]})}",
                         f"--output_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["draft"] for r in rows] == ["closed form", "exit model", "mlp"]
  for r in rows:
    assert r["identical_to_ar"], r["draft"]
    assert r["rounds"] > 0 and 1 <= r["measured_tokens"] <= r["gamma"] + 1
    assert 1 <= r["measured_drafts"] <= r["gamma"]
    assert 1 <= r["predicted_exit_drafts"] <= r["gamma"] == r["predicted_closed_drafts"]
  assert rows[2]["n_mlp_skipped"] == 28 and rows[2]["n_attn_skipped"] == 0
  assert "| specbench-81 | mlp | 0 + 28, 2 |" in (tmp_path / "summary.md").read_text()


def test_draft_vocab_rounds_decodes_losslessly_and_prices_the_smaller_head(tmp_path):
  """experiments/draft_vocab_rounds.py on SmolLM2 (f32): the fixed draft decodes AR's tokens with
  the whole vocabulary and with 1024 tokens, and the x AR figure of K = 1024 puts the head's
  saving, the other 48,128 rows' bytes over the profile's bandwidth, on the draft step."""
  profile = (REPO / "profiles" /
             "NVIDIA_H200__SmolLM2-135M-Instruct.Q4_1.gguf_pallas_rows2_pallas_windows__bfloat16.json")
  env = dict(os.environ, KNAPSPEC_DATA=str(DATA_DIR), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "draft_vocab_rounds.py"),
                         f"--profile={profile}", "--prompts=long:300", "--ks=0,1024",
                         "--new_tokens=24", "--gamma=3", f"--output_dir={tmp_path}"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["k"] for r in rows] == [0, 1024]
  assert all(r["identical_to_ar"] and r["rounds"] > 0 for r in rows)
  read_gbps = json.loads(profile.read_text())["read_gbps"]
  assert rows[0]["head_saving_ms"] == 0.0
  assert rows[1]["head_saving_ms"] == pytest.approx((49152 - 1024) * 576 * 2 / read_gbps / 1e6)


def test_selection_cost_answers_alike_both_ways():
  """experiments/selection_cost.py checks that the policy's once-per-generation shape key gives
  the same answers as building the arguments for every question (an assert in the script),
  then prints both timings."""
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "selection_cost.py"),
                         "--skip_sets=3", "--repeats=1"], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "198 weight arrays; 30 questions per repeat" in proc.stdout, proc.stdout
  assert "per_check" in proc.stdout and "per_policy" in proc.stdout


def test_switch_cost_worker_mode_loads_what_the_worker_compiled(tmp_path):
  """switch_cost.py --smoke --modes=worker: each set's program comes from the compile worker
  through the executable store, loaded in the background (nothing compiled in the process but
  AR's program), and computes the same pending token and cursor as the program compiled in the
  process (checked for every set under --smoke); without the store the mode is refused."""
  out = tmp_path / "switch_cost.json"
  script = str(REPO / "experiments" / "gpu" / "switch_cost.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu", KNAPSPEC_CACHE=str(tmp_path / "cache"),
             KNAPSPEC_EXEC_CACHE="1", KNAPSPEC_XLA_CACHE="1")
  proc = subprocess.run([sys.executable, script, "--smoke", "--modes=worker", f"--output={out}"],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = json.loads(out.read_text())
  assert [r["mode"] for r in records] == ["worker"] * 2
  for r in records:
    assert r["equal_to_own_compile"] is True and r["background_load_s"] > 0, r
    assert r["segment_graphs"] is False  # load_model's default on this CPU (True on one GPU)
    assert r["worker_s"] >= r["background_load_s"] and r["ms_per_round"] > 0
    # the paired baseline: as many AR loops alone after the load as ran beside it, and what
    # the loops beside lost against them
    beside = r["ar_loops_while_compiling"] + r["ar_loops_while_loading"]
    assert r["ar_loops_alone_after"] == max(beside, 2) and r["ar_ms_per_step_alone_after"] > 0
    ms = lambda k: 0.0 if r[f"ar_ms_per_step_while_{k}"] is None else r[f"ar_ms_per_step_while_{k}"]
    want = (ms("compiling") * r["ar_loops_while_compiling"] + ms("loading") *
            r["ar_loops_while_loading"] - beside * r["ar_ms_per_step_alone_after"]) * 4 / 1e3
    assert r["decoding_lost_s"] == pytest.approx(want, abs=1e-9)
  assert records[0]["worker_start_s"] > 0 and records[1]["worker_start_s"] == 0.0
  parts_out = tmp_path / "parts.json"  # store_load_parts.py on the entries the run wrote
  parts = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu" /
                                              "store_load_parts.py"),
                          f"--store={tmp_path / 'cache' / 'executables'}", "--repeats=1",
                          f"--output={parts_out}"], cwd=REPO, capture_output=True, text=True,
                         env=env, timeout=300)
  assert parts.returncode == 0, parts.stderr[-3000:]
  loads = json.loads(parts_out.read_text())
  assert {r["program"].rsplit(".", 1)[-1] for r in loads} >= {"SpecSegmentStatics",
                                                             "ARSegmentStatics"}
  for r in loads:
    assert r["total_s"] >= r["deserialize_and_load_s"] > 0 and r["megabytes"] > 0
    assert r["beside_load_s"] > 0 and 0 < r["python_rate_kept"] and r["longest_stall_ms"] >= 0
    assert [w["switch_interval_s"] for w in r["wakes"]] == [0.005, 0.0005]  # the defaults
    for w in r["wakes"]:  # each wake at least on time, on average; the longest one of them
      assert w["wakes"] >= 1 and w["late_ms_per_1000_wakes"] >= 0
      assert w["longest_late_ms"] >= w["late_ms_per_1000_wakes"] / 1000
  refused = subprocess.run([sys.executable, script, "--smoke", "--modes=worker"], cwd=REPO,
                           capture_output=True, text=True, timeout=300,
                           env=dict(env, KNAPSPEC_EXEC_CACHE="0"))
  assert refused.returncode != 0 and "needs the executable store" in refused.stderr


def test_switch_cost_dispatch_runs_the_static_drafts_tokens(tmp_path):
  """experiments/gpu/switch_cost.py --smoke: the host-dispatched draft (mode "dispatch", one
  jitted call per kept layer or sublayer) decodes the static draft's greedy tokens and writes
  its keys and values for each set (the script asserts it under --smoke, with one more set that
  calls attention and MLP alone), compiles its five programs once for every set, and times a
  step beside the static and run-time modes."""
  out = tmp_path / "switch_cost.json"
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "gpu" / "switch_cost.py"),
                         "--smoke", f"--output={out}"], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = json.loads(out.read_text())
  assert [r["mode"] for r in records] == (["static"] * 2 + ["runtime"] * 2 + ["dispatch"] * 2
                                          + ["dispatch_layers"] * 2)
  dispatch, per_layer = records[4:6], records[6:]
  for r in dispatch + per_layer:
    assert r["tokens_equal_static"] is True and r["rounds_equal_static"] is True
  assert [(r["n_attn_skipped"], r["calls_per_step"]) for r in dispatch] == [(0, 4), (1, 3)]
  # embed, head, and attention, MLP and layer programs for each of the tiny shape's 2 layers
  assert all(r["executables"] == 2 + 3 * 2 for r in per_layer)
  for r in dispatch:
    assert r["dispatch_tokens"] == r["static_tokens"] and r["ms_per_round"] > 0
    assert len(set(r["dispatch_tokens"])) > 1  # a check that a stuck token would not pass
    assert np.isfinite(r["ms_per_draft_step"]) and r["ms_per_draft_step"] > 0
    assert 0 < r["host_ms_per_step"] and 0 <= r["switch_s"] < 0.05
    assert r["executables"] == 5  # the second set compiled nothing
  assert dispatch[0]["compile_once_s"] > 0 and dispatch[1]["compile_once_s"] == 0
  assert proc.stdout.count("dispatch tokens == static tokens: True") == 6, proc.stdout


def test_trace_overlap_helpers_match_a_numpy_timeline():
  """same_process_slowdown.py's `merged`, `overlap_with` and `successive` (device_trace_summary's
  busy time, overlapping events and how each event starts against the one before it,
  BENCHMARKS.md 10.22-10.23) against a boolean timeline in NumPy, on random integer intervals;
  run in a child (the script defines absl flags at import)."""
  code = """
import importlib.util, pathlib, sys
import numpy as np
sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parent))
spec = importlib.util.spec_from_file_location("sps", sys.argv[1])
sps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sps)
rng = np.random.default_rng(0)
for trial in range(50):
  starts = rng.integers(0, 200, size=rng.integers(1, 30))
  spans = [(int(s), int(s + rng.integers(1, 25))) for s in starts]
  timeline = np.zeros(260, bool)
  for s, e in spans:
    timeline[s:e] = True
  union = sps.merged(spans)
  assert sum(e - s for s, e in union) == timeline.sum(), (spans, union)
  assert all(a[1] < b[0] for a, b in zip(union, union[1:]))  # disjoint and sorted
  for _ in range(10):
    s = int(rng.integers(0, 240)); e = s + int(rng.integers(1, 20))
    assert sps.overlap_with(union, s, e) == timeline[s:e].sum()
  # successive: each event against the one before it in start order, on the timeline (ns)
  order = sorted(spans)
  pairs = list(zip(order, order[1:]))
  t = np.arange(260)
  both = [((t >= p[0][0]) & (t < p[0][1])) & ((t >= p[1][0]) & (t < p[1][1])) for p in pairs]
  overlaps = [int(b.sum()) for b in both if b.any()]
  gaps = [p[1][0] - p[0][1] for p, b in zip(pairs, both) if not b.any()]
  side = sum(int(b.sum()) >= 0.5 * min(p[0][1] - p[0][0], p[1][1] - p[1][0])
             for p, b in zip(pairs, both) if b.any())
  got = sps.successive(spans)
  assert (got["overlaps"], got["gaps"], got["side_by_side"]) == (len(overlaps), len(gaps), side)
  if overlaps:
    assert abs(got["overlap_us_median"] - np.median(overlaps) / 1e3) < 1e-3
  if gaps:
    assert abs(got["gap_us_p90"] - np.percentile(gaps, 90) / 1e3) < 1e-3
print("ok")
"""
  proc = subprocess.run([sys.executable, "-c", code,
                         str(REPO / "experiments" / "gpu" / "same_process_slowdown.py")],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_slowdown_triggers_run_each_program_in_a_fresh_child(tmp_path):
  """same_process_slowdown.py --trigger=A,B,.. (the trigger bisect, BENCHMARKS.md 10.23-10.24):
  every trigger runs in a child process of its own, each child times AR fresh, after its one
  program, with AR's programs loaded anew, and after the program's second run; the search's
  compiler options (no CUDA graphs) compile here too, and a misspelt trigger stops the run
  before any child starts."""
  script = str(REPO / "experiments" / "gpu" / "same_process_slowdown.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = tmp_path / "triggers.json"
  # one trigger of each kind of program: a dot with compiler options, the search's family with
  # its options, a plain jitted program (device_loop and large_temp, two more of that kind, took
  # 18 s of the suite; session 36)
  triggers = ("none", "cublas_dot", "search_no_graphs", "argsort")
  proc = subprocess.run(
      [sys.executable, script, "--random_shape=tiny", "--dtype=float32", "--n_tokens=40",
       "--new_tokens=8", "--repeats=1", f"--trigger={','.join(triggers)}", f"--output={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  stages = lambda t: (("fresh", "after_none") if t == "none" else
                      ("fresh", f"after_{t}", "ar_reloaded", f"after_{t}_again"))
  assert [(r["trigger"], r["stage"]) for r in rows] == [(t, s) for t in triggers
                                                        for s in stages(t)]
  assert all(r["median"] > 0 and r["live_executables"]["count"] > 0 for r in rows)
  for t in triggers[1:]:  # each program compiled, its custom calls listed, and run
    assert f"[{t}]   {t}'s program:" in proc.stdout and f"[{t}]   {t}: " in proc.stdout, t
  bad = subprocess.run([sys.executable, script, "--random_shape=tiny", "--trigger=none,serach"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
  assert bad.returncode != 0 and "['serach'] not 'all' or among" in bad.stderr + bad.stdout
  assert "fresh" not in bad.stdout


def test_window_cost_fit_recovers_stated_costs(tmp_path):
  """experiments/window_cost_fit.py on windows whose seconds are stated as 1.3 ms a draft step,
  1.6 ms a verify and 1.0 ms a call, with draft forwards per round varying as the confidence
  exit makes them: both fits give back 1.3 and 1.6 (the held fit at the profile's call, which
  is stated here too), and the two bounds are the medians worked out here from the profile's
  costs. A draft whose windows all ran the same forwards per round is undetermined."""
  from knapspec_jax.latency import LatencyProfile
  from knapspec_jax.skip_mask import SkipMask
  profile_path = REPO / ("profiles/NVIDIA_H200__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
                         "_pallas_rows2_step2_pallas_windows__bfloat16.json")
  profile = LatencyProfile.load(profile_path)
  skip = SkipMask.from_layers(28, attn=range(4, 13), mlp=range(5, 15))
  bits = [int(x) for x in skip.skip]
  def window(forwards, rounds, seconds, gamma=4, context=16000, reason="kept"):
    return dict(decision=dict(skip=bits, gamma=gamma, reason=reason), context=context,
                rounds=rounds, draft_forwards=forwards, measured_s=seconds,
                ar_tokens_while_compiling=0)
  stated = [(130, 64), (180, 64), (240, 64), (150, 40), (60, 20)]
  windows = [window(f, r, f * 1.3e-3 + r * 1.6e-3 + profile.call_s) for f, r in stated]
  windows.append(window(8, 8, 1.0, reason="a trial of 8 rounds"))  # left out: a trial
  same = [window(128, 64, 0.3, gamma=2), window(129, 64, 0.31, gamma=2)]
  records = [dict(item_id="doc", method="knapspec", timed_windows=[windows[:3], windows[3:]]),
             dict(item_id="doc2", method="knapspec", timed_windows=[same])]
  path = tmp_path / "results.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = subprocess.run([sys.executable, str(REPO / "experiments" / "window_cost_fit.py"),
                        f"--profile={profile_path}", str(path)], cwd=REPO / "experiments",
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  draft_s, verify_s = profile.t_step(skip, 16384), profile.t_verify(5, 16384)
  seconds = [f * 1.3e-3 + r * 1.6e-3 + profile.call_s for f, r in stated]
  on_draft = statistics.median((t - profile.call_s - r * verify_s) / f
                               for (f, r), t in zip(stated, seconds))
  on_verify = statistics.median((t - profile.call_s - f * draft_s) / r
                                for (f, r), t in zip(stated, seconds))
  row = next(line for line in out.stdout.splitlines() if line.startswith("| doc |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[2:6] == ["9 + 10, 4", "5", "16384", "2.03-3.75"], row
  assert cells[6:8] == [f"{1e3 * draft_s:.3f}", f"{1e3 * verify_s:.3f}"], row
  for cell, want in zip(cells[8:12], (1.3, 1.6, 1.3, 1.6)):
    assert cell.startswith(f"{want:.3f} +- 0.000"), row
  assert cells[12:] == [f"{1e3 * on_draft:.3f}", f"{1e3 * on_verify:.3f}"], row
  row2 = next(line for line in out.stdout.splitlines() if line.startswith("| doc2 |"))
  assert row2.count("undetermined") == 4, row2


def test_kept_draft_windows_pins_one_draft_and_counts_its_windows(tmp_path):
  """experiments/kept_draft_windows.py on SmolLM2 (CPU, f32, the committed H200 profile for the
  decisions): the pinned draft decodes in interval windows and in one window to the bucket's
  end (the 53-token prompt and 24 new tokens stay in bucket 256), both with AR's output, and the
  JSON keeps every generation, paired with its repeat's AR."""
  profile = REPO / "profiles" / "NVIDIA_H200__SmolLM2-135M-Instruct.Q4_1.gguf_pallas__bfloat16.json"
  out = tmp_path / "windows.json"
  proc = _script("kept_draft_windows.py", f"--profile={profile}", "--new_tokens=24",
                 "--interval=2", "--repeats=1", "--host_profile", f"--output={out}", timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  by = {r["setting"]: r for r in rows}
  assert set(by) == {"ar", "interval windows", "bucket windows"} and len(rows) == 3
  assert all(r["same_as_ar"] for r in rows), rows
  assert by["bucket windows"]["windows"] == 1 < by["interval windows"]["windows"]
  assert by["ar"]["speedup"] == 1.0
  for name in ("interval windows", "bucket windows"):
    r = by[name]
    assert r["speedup"] == pytest.approx(by["ar"]["decode_s"] / r["decode_s"])
    assert len(r["host_s"]) == r["windows"] and 0 <= sum(r["host_s"]) <= r["outside_windows_s"]
    assert all(0 <= read <= host for read, host in zip(r["read_s"], r["host_s"]))
  assert "| bucket windows | 1 |" in proc.stdout and "paired:" in proc.stdout
  # --host_profile: one more window is one more segment program call and its device reads (the
  # cursor and counters, 4 fetches at least), and no eager device operation: its round budget
  # goes to the program as host scalars (two eager ops a window before, 2.9 ms on the H100,
  # BENCHMARKS.md 10.37)
  extra = json.loads(out.read_text())["host_profile"]["per extra window"]["groups"]
  assert extra["program calls"]["calls"] == pytest.approx(1.0)
  assert extra["device reads"]["calls"] >= 4
  assert extra["eager device ops"]["calls"] == pytest.approx(0.0)
  assert "| per extra window | 1 |" in proc.stdout


def test_text_by_autotuning_finds_where_a_text_departs_from_each_reference(
    tmp_path, smol_path, smol_hf, hf_greedy):
  """experiments/gpu/text_by_autotuning.py reruns a reference record's prompt with its settings
  and reports where its AR text departs from each reference's: nowhere from transformers' greedy
  text (float32, the record as the benchmark writes it, gzipped), at the token changed in a copy
  of it, and its second run from its first nowhere."""
  prompt = list(range(100, 130))
  text = hf_greedy(smol_hf, prompt, 6)
  record = dict(method="ar", item_id="doc-0", prompt_ids=prompt, output_ids=text,
                dtype="float32", attention=None, window_attention=None, draft_vocab=0,
                segment_graphs=False, device="transformers", date="-")
  same, changed = tmp_path / "same.jsonl.gz", tmp_path / "changed.jsonl"
  with gzip.open(same, "wt") as f:
    f.write(json.dumps(record) + "\n" + json.dumps(dict(record, method="knapspec")) + "\n")
  altered = text[:3] + [text[3] + 1] + text[4:]
  changed.write_text(json.dumps(dict(record, output_ids=altered)) + "\n"
                     + json.dumps(dict(record, item_id="doc-1")) + "\n")
  out = tmp_path / "text.json"
  proc = _script("gpu/text_by_autotuning.py", f"--gguf={smol_path}", "--items=doc-0",
                 "--new_tokens=6", "--label=cpu", f"--output={out}", same, changed,
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  [row] = json.loads(out.read_text())
  assert row["item_id"] == "doc-0" and row["label"] == "cpu" and row["output_ids"] == text
  assert row["second_run_departs_at"] is None
  assert [(a["path"], a["departs_at"]) for a in row["against"]] == [
      (str(same), None), (str(changed), 3)]


def test_borrowed_draft_scores_reads_the_decisions_that_kept_a_borrowed_draft(tmp_path):
  """experiments/borrowed_draft_scores.py on a stated record: the one window whose decision kept
  a draft borrowed from another bucket gives its scores (own search 1.02x; the draft's alpha 0.83
  where chosen, 0.28 and 0.77x on this search's tokens) beside what the window measured (145 of
  176 drafted tokens accepted; 587.5 tok/s over AR's 500); a window of another reason, an AR
  record and a run without windows give no row."""
  reason = ("searched here: predicted 1.02x AR; the draft borrowed from context 2165 (6 attn + 15 "
            "MLP, gamma 6) predicts 1.24x AR (alpha 0.83; on these tokens 0.28, 0.77x); kept "
            "(chosen at context 2165; last window 726 tok/s, AR predicted 498)")
  window = lambda why: dict(context=15991, tokens=209, rounds=64, drafted=176, accepted=145,
                            measured_tokens_per_s=587.5,
                            decision=dict(reason=why, ar_tpt=500.0, gamma=6, alpha=0.83))
  records = [dict(item_id="doc", method="knapspec", warmup_windows=[None],
                  timed_windows=[[window("kept (chosen at context 2165)"), window(reason)]]),
             dict(item_id="doc", method="ar", timed_windows=[None])]
  path = _gzipped_records(tmp_path, records)
  proc = _script("borrowed_draft_scores.py", path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| doc ")]
  assert rows == ["| doc | 15991 | 1.02x | 6 + 15, gamma 6 (2165) | 0.83 | 0.28, 0.77x | "
                  "0.82, 1.18x |"], proc.stdout
  assert "1 windows" in proc.stdout
  assert _script("borrowed_draft_scores.py").returncode != 0  # no records: a usage error


def test_search_position_sorts_searches_by_how_far_into_the_answer_they_ran(tmp_path):
  """experiments/search_position.py on a stated record (prompt of 1000 tokens): the searches are
  the windows whose reason gives a search's best (a decline's "predicts", a draft's
  "predicted", the search's own best before a borrowed draft's) or says no candidate survived;
  a kept draft's window ("AR predicted 498") and an AR record are none. The summary puts the one
  at 15 generated tokens apart from the two further in."""
  window = lambda n, why, s: dict(context=1000 + n, search_s=s, decision=dict(reason=why))
  runs = [[window(15, "declined: best draft (2 attn + 0 MLP skipped, gamma 2, alpha 0.80) "
                      "predicts 1.02x AR", 0.12),
           window(140, "kept (chosen at context 1015; last window 510 tok/s, AR predicted 498)",
                  0.002)],
          [window(300, "searched here: predicted 1.36x AR; the draft borrowed from context 2165 "
                       "(6 attn + 15 MLP, gamma 6) predicts 1.24x AR", 0.2),
           window(600, "no candidate survived the search", 0.1)]]
  records = [dict(item_id="doc", method="knapspec", prompt_tokens=1000, warmup_windows=[runs[0]],
                  timed_windows=[runs[1], None]),
             dict(item_id="doc", method="ar", prompt_tokens=1000, timed_windows=[None])]
  path = _gzipped_records(tmp_path, records)
  proc = _script("search_position.py", path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 | doc ")]
  assert rows == ["| 1 | doc | W0 | 15 | 1015 | 0.120 | 1.02x |",
                  "| 1 | doc | T0 | 300 | 1300 | 0.200 | 1.36x |",
                  "| 1 | doc | T0 | 600 | 1600 | 0.100 | – |"], proc.stdout
  assert "| doc | 1.02x (1) | 1.36x (1) |" in proc.stdout
  assert "3 searches" in proc.stdout
  assert _script("search_position.py").returncode != 0  # no records: a usage error


def test_text_repetition_counts_distinct_ngrams_of_each_output_and_of_ars(tmp_path):
  """experiments/text_repetition.py on stated records (n = 2, the last 6 tokens): AR's output
  ends 1 2 3 4 5 6 (5 bigrams, all distinct: 1.00); KnapSpec's leaves it at token 2 and ends in
  the loop 7 8 7 8 7 8 (5 bigrams, 2 distinct: 0.40); a record without output ids is skipped,
  and an output shorter than one n-gram pair cannot repeat (1.00)."""
  records = [dict(item_id="doc", method="ar", paired_speedup=1.0, departs_at=None,
                  output_ids=[9, 9, 1, 2, 3, 4, 5, 6]),
             dict(item_id="doc", method="knapspec", paired_speedup=1.5, departs_at=2,
                  output_ids=[9, 9, 7, 8, 7, 8, 7, 8]),
             dict(item_id="doc", method="fixed", paired_speedup=0.9),
             dict(item_id="short", method="ar", paired_speedup=1.0, output_ids=[4])]
  path = _gzipped_records(tmp_path, records)
  proc = _script("text_repetition.py", "--n=2", "--tail=6", path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
  assert rows == ["| 1 | doc | ar | 1.000 | - | 1.00 | 1.00 |",
                  "| 1 | doc | knapspec | 1.500 | 2 | 0.40 | 1.00 |",
                  "| 1 | short | ar | 1.000 | - | 1.00 | 1.00 |"], proc.stdout
  assert _script("text_repetition.py").returncode != 0  # no records: a usage error


def test_decision_cost_drafts_with_the_warm_up_compiled_kept_draft():
  """experiments/decision_cost.py: the draft kept at every bucket is compiled by each
  generation's warm-up, and each generation's decision finds it compiled (the segment
  programs' argument shapes as segment_compiled builds them, without tracing the counters,
  key the program the warm-up compiled, which the window then calls without a compile): every
  decision drafts with it, nothing compiles in the decode, and a time is printed for each."""
  proc = _script("decision_cost.py", "--generations=2", "--max_new_tokens=8", timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("generation ")]
  assert len(lines) == 2, proc.stdout
  for line in lines:
    line, compiled = line.split(" | ")
    assert compiled == "compiled in the decode: 0.00 s", line  # the warm-up's program ran
    decisions = line.split(": ", 1)[1].split("; ")
    assert decisions and all(d.endswith("(kept (chosen at context 53)") for d in decisions), line
    assert all(float(d.split(" ms")[0]) > 0 for d in decisions), line
  assert "not compiled" not in proc.stdout


def test_acceptance_by_position_logs_each_windows_rounds_losslessly(tmp_path):
  """experiments/acceptance_by_position.py on SmolLM2 (a 300-token document, 40 answer tokens,
  windows of 4 rounds, FixedPolicy's default set at gamma 3 and a set of common.DRAFTS at gamma
  2): the script stops unless the fixed draft's output is AR's; every window row starts further
  into the answer than the one before, and its counts are a speculative round's: each round
  keeps its accepted drafts plus the verify's own token (the last window may be cut at the token
  budget), accepts no more than it drafted and drafts at most gamma a round. A set of another
  layer count, no such set, or a Spec-Bench question the subset lacks is refused by name."""
  out = tmp_path / "positions.json"
  proc = _script("acceptance_by_position.py", "--length=300", "--new_tokens=40", "--rounds=4",
                 "--draft=auto:auto:3", "--draft=s:smollm2-14+9:2", f"--output={out}",
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "answer tokens    0-  16:" in proc.stdout
  run = json.loads(out.read_text())
  assert run["new_tokens"] == 40 and [d["draft"] for d in run["drafts"]] == ["auto", "s"]
  for d in run["drafts"]:
    rows, gamma = d["rows"], d["gamma"]
    assert rows and [r["answer_token"] for r in rows] == sorted({r["answer_token"] for r in rows})
    for i, r in enumerate(rows):
      assert 0 < r["rounds"] <= 4 and r["accepted"] <= r["drafted"] <= gamma * r["rounds"], r
      if i < len(rows) - 1:
        assert r["tokens"] == r["rounds"] + r["accepted"], r
        assert rows[i + 1]["answer_token"] >= r["answer_token"] + r["tokens"]
      else:
        assert r["tokens"] <= r["rounds"] + r["accepted"], r
    assert rows[-1]["answer_token"] + rows[-1]["tokens"] <= 40
  for args, message in ((["--draft=x:nope:3"], "no set 'nope'"),
                        (["--draft=x:13+14:10"], "the set has 28 layers, the model 30"),
                        (["--length=100", "--question=13"], "no Spec-Bench question 13")):
    bad = _script("acceptance_by_position.py", "--length=300", "--new_tokens=8", *args,
                  timeout=300)
    assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]


def test_reference_scoring_lines_up_with_ar_and_its_scorings_meet_where_they_must(tmp_path):
  """experiments/reference_scoring.py on SmolLM2 (a 300-token document, 40 answer tokens,
  windows of 8): with nothing skipped every scoring agrees with AR's text on every token (the
  cache, the positions and the text line up); with FixedPolicy's default set, rounds of 8 (the
  whole window through model.forward) agree token by token with the search's block scoring
  (knapsack.mask_agreement), and every scoring agrees with each token alone (rounds of 1) on a
  window's first token, which sees the same cache in all of them; the prefix scoring is the
  block's first gamma tokens; the predicted tokens per round lie in [1, gamma + 1], and rounds
  run in order over bits that all agree yield gamma + 1 tokens. A set of another layer count is
  refused by name."""
  out = tmp_path / "scoring.json"
  proc = _script("reference_scoring.py", "--length=300", "--new_tokens=40", "--n_ref=8",
                 "--sub_blocks=1,4,8", "--draft=none:4", "--draft=alt:3", f"--output={out}",
                 timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  run = json.loads(out.read_text())
  none, alt = run["drafts"]
  assert [w["answer_token"] for w in none["windows"]] == [0, 8, 16, 24]
  for w in none["windows"]:
    for key in ("block", "L1", "L4", "L8"):
      assert all(w[key + "_agree"]) and len(w[key + "_agree"]) == 8, (key, w)
  for w in alt["windows"]:
    assert w["L8_agree"] == w["block_agree"], w
  for d in (none, alt):
    for w in d["windows"]:
      assert w["prefix_agree"] == w["block_agree"][:d["gamma"]], w
      for key in ("block", "L4", "L8", "prefix"):
        assert w[key + "_agree"][0] == w["L1_agree"][0], (key, w)
        assert 1.0 <= w[key + "_tokens"] <= d["gamma"] + 1, (key, w)
  realized = tmp_path / "realized.json"  # acceptance_by_position.py's layout, one window
  realized.write_text(json.dumps(dict(drafts=[dict(draft="alt", rows=[dict(
      answer_token=0, tokens=12, rounds=6, drafted=9, accepted=6)])])))
  profile = REPO / "profiles" / "cpu__AMD_EPYC_x2__SmolLM2-135M-Instruct.Q4_1.gguf__float32.json"
  again = _script("reference_scoring.py", f"--scored={out}", f"--realized={realized}",
                  f"--profile={profile}", "--attn_len=512", timeout=120)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "answer tokens    0-  16: realized" in again.stdout, again.stdout
  assert "L4: mean error" in again.stdout and "block: mean error" in again.stdout
  assert "prefix: mean error" in again.stdout
  assert "draft none: no realized rounds" in again.stdout, again.stdout
  # every token agrees: each round of 4 drafts yields 5 tokens, in order and independent alike
  assert ("draft none (gamma 4), tokens a round without the exit, in order / independent: "
          "block 5.00 / 5.00 L1 5.00 / 5.00") in again.stdout, again.stdout
  bad = _script("reference_scoring.py", "--length=300", "--new_tokens=8", "--draft=13+14:10",
                timeout=300)
  assert bad.returncode != 0 and "the set has 28 layers, the model 30" in bad.stderr, \
      bad.stderr[-2000:]


def test_against_table_compares_texts_and_pairs_repeats_with_the_named_method():
  """summarize.against_table: a method's text against the named method's (equal lists and a
  one-token change) and the median of run-by-run ratios, worked by hand: runs (6, 9, 10) over
  (5, 10, 8) give ratios 1.2, 0.9, 1.25, median 1.2; plain AR is not listed against it."""
  from experiments import summarize
  base = dict(item_id="doc", prompt_tokens=9, method="ar-rerun", tokens_per_s_runs=[5.0, 10.0, 8.0],
              output_ids=[1, 2, 3])
  same = dict(base, method="knapspec", tokens_per_s_runs=[6.0, 9.0, 10.0])
  other = dict(base, method="clasp", output_ids=[1, 2, 4])
  ar = dict(base, method="ar", output_ids=[1, 2, 5])
  table = summarize.against_table([ar, base, same, other], "ar-rerun")
  assert "| doc | 9 | knapspec | yes | 1.200 |" in table, table
  assert "| doc | 9 | clasp | no | 1.000 |" in table, table
  assert "| ar |" not in table
  assert "| all 1 | – | knapspec | 1/1 | median 1.200, 1.200-1.200 |" in table, table
