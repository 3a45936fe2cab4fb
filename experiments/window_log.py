"""A benchmark run's decode windows, one line each: for every record of a method (each prompt),
its warm-up runs (W0, ...) and timed runs (T0, ...), each window's context, tokens, rounds,
drafted and accepted tokens, plain tokens decoded while a draft compiled, measured tokens/s, the
profile's tokens/s for the window as it ran (metrics.predicted_wall_s), search and compile
seconds, the host's time after it, to the next window's start outside the decision (host_s,
records since session 31; read_s of it the device read),
the draft (sublayers skipped, gamma) and the decision's reason.

  python experiments/window_log.py results/h200_qwen/RUN/results.jsonl [--method=knapspec]
      [--prompt=longdoc-16000] [--reason_chars=160]
"""

import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from knapspec_jax import metrics  # noqa: E402
from summarize import read_records, record_windows  # noqa: E402

_METHOD = flags.DEFINE_string("method", "knapspec", "The method whose windows are listed.")
_PROMPT = flags.DEFINE_string("prompt", "", "Only prompts whose item_id contains this.")
_REASON = flags.DEFINE_integer("reason_chars", 160, "Characters of each decision's reason.")


def window_line(label: str, w: dict, reason_chars: int) -> str:
  d = w["decision"]
  seconds = metrics.predicted_wall_s(w)
  predicted = w["tokens"] / seconds if seconds else 0.0
  return (f"  {label} ctx {w['context']:6d} tokens {w['tokens']:4d} rounds {w['rounds']:3d} "
          f"drafted {w['drafted']:4d} accepted {w['accepted']:4d} "
          f"plain-while-compiling {w.get('ar_tokens_while_compiling', 0):4d} | "
          f"{w['measured_tokens_per_s']:6.1f} tok/s, profile {predicted:6.1f} | search "
          f"{w['search_s']:.3f} s compile {w['compile_s']:.2f} s"
          + (f" host {1e3 * w['host_s']:.2f} ms (read {1e3 * w['read_s']:.2f})"
             if "host_s" in w else "")
          + f" | attn {d['n_attn_skipped']} + "
          f"mlp {d['n_mlp_skipped']} gamma {d['gamma']} | {d['reason'][:reason_chars]}")


def main(argv):
  for path in argv[1:]:
    for r in read_records(path):
      if r.get("method") != _METHOD.value or _PROMPT.value not in r["item_id"]:
        continue
      print(f"{r['item_id']} ({r['prompt_tokens']} prompt tokens): runs "
            f"{[round(x, 1) for x in r['tokens_per_s_all']]} tok/s, paired "
            f"{r.get('paired_speedup', float('nan')):.3f}x AR")
      for label, w in record_windows(r):
        print(window_line(label, w, _REASON.value))


if __name__ == "__main__":
  app.run(main)
