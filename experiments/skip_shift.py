"""Analysis 2: does the knapsack move its skips toward attention as the context grows?

  python experiments/skip_shift.py --lengths=100,3000 --searches=8 --every=256 \
      --output_dir=results/cpu/analysis/skip_shift
  python experiments/skip_shift.py --model=qwen2.5-coder-1.5b --max_context=8192 \
      --profile=profiles/<the H200 Qwen profile>.json --lengths=100,2000,4000 --searches=3 \
      --every=128 --output_dir=results/cpu/analysis/skip_shift_qwen   # the H200's candidates

For each prompt: prefill, then a long plain generation; every `every` tokens run the knapsack
search with the device's latency profile (integer weights at that context) and the TPT
selection with no decline margin and no compile charge, and record the best draft's attention
and MLP skip counts (what KnapSpec would choose if it drafted). JSONL, a Markdown table and a
plot of skipped sublayers against context length.
"""

import json
import pathlib
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import plots  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import latency, methods  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["100", "4000", "6500"], "Prompt lengths (< 300: a "
                             "Spec-Bench writing question).")
_SEARCHES = flags.DEFINE_integer("searches", 6, "Searches per prompt.")
_EVERY = flags.DEFINE_integer("every", 16, "Plain tokens between searches.")
_R = flags.DEFINE_integer("n_ref", 16, "Reference tokens.")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl, summary.md and a plot go here.")
_FROM = flags.DEFINE_string("from_jsonl", None, "Redo the table and plot from these results.")
_MODEL = flags.DEFINE_string("model", None, "Which model searches (load_model's argument; "
                             "default: the bundled SmolLM2-135M).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", None, "Its KV cache positions (load_model's "
                                    "max_context).")
_PROFILE = flags.DEFINE_string("profile", None, "Weigh the items with this stored profile (JSON; "
                               "another device's candidates), not this device's.")


def main(argv):
  del argv
  if _FROM.value:
    rows = [json.loads(line) for line in open(_FROM.value)]
    return write_outputs(rows, [], len(rows[0]["skip"]))
  started = time.perf_counter()
  model = ks.load_model(_MODEL.value, max_context=_MAX_CONTEXT.value)
  profile = (latency.LatencyProfile.load(_PROFILE.value) if _PROFILE.value
             else methods.profile_for(model))
  print(f"profile: {profile.device}, {profile.model}")
  lines = ["| prompt tokens | context | weights (attn, MLP) | best attn skipped | best MLP "
           "skipped | gamma | alpha | predicted x AR |", "|---|---|---|---|---|---|---|---|"]
  print("\n".join(lines))
  rows = []
  for n in map(int, _LENGTHS.value):
    item_id, ids = common.prompt_ids(model, n)
    budget = _SEARCHES.value * _EVERY.value + _R.value + 2
    point = common.decode_plainly(model, ids, _R.value, budget)
    for k in range(_SEARCHES.value):
      if k:
        point = common.advance(model, ids, point, _EVERY.value)
      cands, w, attn_len = common.search(model, point, profile, n_ref=_R.value)
      best, gamma, tpt = common.best_draft(cands, profile, attn_len)
      ar = 1 / profile.t_step(None, attn_len)
      row = dict(item_id=item_id, prompt_tokens=len(ids), context=point.context,
                 model=f"{model.name} ({model.dtype})", weights_profile=profile.device,
                 weights=list(w), n_attn_skipped=len(best.skip.attn_skipped),
                 n_mlp_skipped=len(best.skip.mlp_skipped), gamma=gamma, alpha=best.alpha,
                 predicted_x_ar=tpt / ar, skip=best.skip.to_list(),
                 device=latency.device_name(), date=time.strftime("%F"))
      rows.append(row)
      lines.append(f"| {len(ids)} | {point.context} | {tuple(w)} | {row['n_attn_skipped']} | "
                   f"{row['n_mlp_skipped']} | {gamma} | {best.alpha:.2f} | "
                   f"{row['predicted_x_ar']:.2f} |")
      print(lines[-1] + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
  write_outputs(rows, lines, 2 * model.cfg.n_layers)


def write_outputs(rows, lines, n_sublayers: int):
  """Per-prompt means appended to the table; JSONL, summary.md and the plot to --output_dir."""
  if not lines:  # redone from JSONL: the per-search table again
    lines = ["| prompt tokens | context | weights (attn, MLP) | best attn skipped | best MLP "
             "skipped | gamma | alpha | predicted x AR |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['prompt_tokens']} | {r['context']} | {tuple(r['weights'])} | "
              f"{r['n_attn_skipped']} | {r['n_mlp_skipped']} | {r['gamma']} | {r['alpha']:.2f} | "
              f"{r['predicted_x_ar']:.2f} |" for r in rows]
  lines += ["", "| prompt tokens | contexts | mean attention skipped | mean MLP skipped | "
            "attention share |", "|---|---|---|---|---|"]
  prompts = list(dict.fromkeys(r["prompt_tokens"] for r in rows))
  for n in prompts:
    sub = [r for r in rows if r["prompt_tokens"] == n]
    a = statistics.mean(r["n_attn_skipped"] for r in sub)
    m = statistics.mean(r["n_mlp_skipped"] for r in sub)
    lines.append(f"| {n} | {sub[0]['context']}-{sub[-1]['context']} | {a:.1f} | {m:.1f} | "
                 f"{a / max(a + m, 1e-9):.2f} |")
  print("\n".join(lines[-2 - len(prompts):]))
  if not _OUT.value:
    return
  out = pathlib.Path(_OUT.value)
  common.write_jsonl(out / "results.jsonl", rows)
  (out / "summary.md").write_text("\n".join(lines) + "\n")
  series = {}
  for k, n in enumerate(prompts):
    sub = [r for r in rows if r["prompt_tokens"] == n]
    ctx = [r["context"] for r in sub]
    marker = "os^v"[k % 4]
    series[f"attention ({n}-token prompt)"] = (ctx, [r["n_attn_skipped"] for r in sub],
                                               dict(color="tab:blue", marker=marker))
    series[f"MLP ({n}-token prompt)"] = (ctx, [r["n_mlp_skipped"] for r in sub],
                                         dict(color="tab:orange", marker=marker, ls="--"))
  plots.lines(series, out / "skips_vs_context.png",
              xlabel="context length (tokens: prompt + generated)",
              ylabel=f"sublayers skipped by the best draft (of {n_sublayers})",
              title=f"The best draft's attention and MLP skips against context "
                    f"({rows[0].get('model', 'SmolLM2-135M f32')}, searched on "
                    f"{rows[0]['device']}, items weighed by "
                    f"{rows[0].get('weights_profile', rows[0]['device'])})")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
