"""Prints a stored latency profile: per-sublayer costs, step and verify times, search cost, fit.

  python experiments/show_profile.py profiles/*.json
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax.latency import LatencyProfile  # noqa: E402


def main(paths):
  for path in paths:
    p = LatencyProfile.load(path)
    err = p.errors()
    print(f"{p.device} | {p.model} | {p.dtype}")
    print(f"fit: median rel. error step {100 * err['step_median_rel_err']:.1f}%, verify "
          f"{100 * err['verify_median_rel_err']:.1f}%; "
          f"segment compile {p.segment_compile_s:.1f} s; "
          f"read bandwidth {f'{p.read_gbps:.1f} GB/s' if p.read_gbps else 'not measured'}")
    print("| attn length | t_attn (us) | t_mlp (us) | full step (ms) | verify T=4 (ms) | "
          "verify T=11 (ms) | search R=16 (ms) | attn/MLP |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (256, 1024, 2048, 4096, 8192):
      print(f"| {n} | {p.t_attn(n) * 1e6:.0f} | {p.t_mlp * 1e6:.0f} | "
            f"{p.t_step(None, n) * 1e3:.2f} | {p.t_verify(4, n) * 1e3:.2f} | "
            f"{p.t_verify(11, n) * 1e3:.2f} | {p.search_s(n) * 1e3:.0f} | "
            f"{p.t_attn(n) / p.t_mlp:.2f} |")
    print()


if __name__ == "__main__":
  main(sys.argv[1:])
