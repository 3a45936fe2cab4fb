"""AR's bytes per step and bandwidth, and each verify's cost over a step, from step_width.py's
records (issue 14: "AR >= 90% of measured read bandwidth", "verify of 11 tokens <= 1.10x a
one-token step"). For each bucket's one-row step: the bytes a full step reads at that many
positions (metrics.step_bytes on the shape's abstract bfloat16 weights, nothing allocated), those
bytes over the step's time, and that over each read bandwidth given; for each verify window
timed at the bucket (per kernel depth for tall tiles where step_width.py --tall_tile_stages timed
several) and each wider AR step (width W), its time over the one-row step's, and for
each width its own fractions of the read bandwidths (the same bytes in its time).

  python experiments/gpu/step_bandwidth.py --model=llama3.1-8b --read_gbps=3866.9,4124.1 \
      results/h200/step_width/llama3.1-8b_session25.json

Runs on the CPU. The read bandwidths are the device's measured ones (the benchmark prints its
own at start, "read bandwidth of NVIDIA H200: ... GB/s"; latency.read_bandwidth).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shapes import SHAPES  # noqa: E402
from knapspec_jax import metrics  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402

_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "The records' shape (shapes.SHAPES).")
_READ = flags.DEFINE_list("read_gbps", [], "Measured read bandwidths, GB/s.")


def verify_name(record: dict) -> str:
  """A verify record's window, with the kernel's depth for tall tiles where it was recorded
  (step_width.py --tall_tile_stages): "11", "11 (tall tiles' stages 3)"."""
  stages = record.get("tall_tile_stages")
  window = str(record["verify_window"])
  return window if stages is None else f"{window} (tall tiles' stages {stages})"


def rows(records: list, cfg, read_gbps: list[float]) -> list[dict]:
  """One row per bucket with a one-row AR step: its bytes, GB/s, fractions and verify ratios."""
  params = jax.eval_shape(lambda: model_lib.fuse_projections(
      model_lib.init_random_params(cfg, jax.random.PRNGKey(0), jnp.bfloat16)))
  out = []
  for step in (r for r in records if r.get("width") == 1):
    n = step["attn_len"]
    b = metrics.bandwidth(metrics.step_bytes(params, cfg, n, jnp.bfloat16),
                          step["ms_per_step"] * 1e-3, None)
    out.append(dict(attn_len=n, ms_per_step=step["ms_per_step"], step_gb=b["step_gb"],
                    gb_per_s=b["gb_per_s"],
                    fractions=[b["gb_per_s"] / g for g in read_gbps],
                    verify_over_step={verify_name(r): r["ms_per_step"] / step["ms_per_step"]
                                      for r in records
                                      if r.get("verify_window") and r["attn_len"] == n},
                    width_over_step={r["width"]: r["ms_per_step"] / step["ms_per_step"]
                                     for r in records
                                     if r.get("width", 1) > 1 and r["attn_len"] == n}))
    # A W-row step reads the same weights and cache (its extra rows' activations are noise
    # beside them): AR's step on a GPU runs two rows (ModelConfig.step_rows), so each width's
    # fractions of the read bandwidths are the line for AR at that width.
    out[-1]["width_fractions"] = {w: [f / x for f in out[-1]["fractions"]]
                                  for w, x in out[-1]["width_over_step"].items()}
  return out


def main(argv):
  read_gbps = [float(g) for g in _READ.value]
  for path in argv[1:]:
    for row in rows(json.loads(pathlib.Path(path).read_text()), SHAPES[_MODEL.value], read_gbps):
      fractions = " ".join(f"{100 * f:.0f}% of {g:.0f}" for f, g in zip(row["fractions"],
                                                                      read_gbps))
      verifies = " ".join([f"AR width {w}: {x:.3f}x (" + " ".join(
          f"{100 * f:.0f}%" for f in row["width_fractions"][w]) + ")"
                           for w, x in row["width_over_step"].items()]
                          + [f"verify T={t}: {x:.3f}x" for t, x in row["verify_over_step"].items()])
      print(f"{_MODEL.value} bucket {row['attn_len']:5d}: step {row['ms_per_step']:.3f} ms, "
            f"{row['step_gb']:.2f} GB, {row['gb_per_s']:.0f} GB/s {fractions} | {verifies}")


if __name__ == "__main__":
  app.run(main)
