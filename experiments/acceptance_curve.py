"""How acceptance falls as a draft skips more sublayers, measured on a real model (CPU, f32).

  python experiments/acceptance_curve.py --lengths=100,100,100,100,2000,4000 \
      --output_dir=results/cpu/analysis/acceptance
  python experiments/acceptance_curve.py --model=qwen2.5-coder-1.5b --max_context=4096 \
      --profile=profiles/<the H200 Qwen profile>.json --lengths=100,100,2000 \
      --output_dir=results/cpu/analysis/acceptance_qwen

For each prompt: decode 16 tokens plainly and run the knapsack search on them (latency weights
and uniform weights: skip sets of every size); decode `held_out` more tokens plainly; then for
every candidate compute its top-1 agreement with the full model on those held-out tokens
(teacher-forced: the draft runs on the confirmed tokens, attending to the full model's cache
of the prompt and to its own keys of the new tokens, as a draft does). Held-out agreement is
the per-token acceptance rate alpha of the TPT model without the optimism of scoring a set on
the tokens it was chosen on. The fit alpha = exp(-(b_attn f_attn + b_mlp f_mlp)), f the
fractions of attention / MLP sublayers skipped, is what experiments/project_scale.py transplants
to other model shapes. JSONL, fit.json, a table and a plot.
"""

import functools
import json
import pathlib
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import plots  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import decoding, latency, methods  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_LENGTHS = flags.DEFINE_list("lengths", ["100", "100", "100", "100", "2000", "4000"],
                             "Prompt lengths (< 300: the next Spec-Bench category's question).")
_HELD_OUT = flags.DEFINE_integer("held_out", 48, "Tokens the agreement is measured on.")
_N_REF = flags.DEFINE_integer("n_ref", 16, "Reference tokens for the search.")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl, fit.json and a plot go here.")
_FROM = flags.DEFINE_string("from_jsonl", None, "Redo the fit, table and plot from these results.")
_MODEL = flags.DEFINE_string("model", None, "load_model's path or packaged name (default: the "
                             "bundled SmolLM2-135M).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", None, "load_model's max_context (a smaller KV "
                                    "cache; Qwen2.5-1.5B's own is 32K).")
_PROFILE = flags.DEFINE_string("profile", None, "A stored latency profile (JSON) whose attention "
                               "and MLP costs weigh the knapsack's items (e.g. the H200's for the "
                               "GPU's candidates); default: this device's profile of the model.")


@functools.partial(jax.jit, static_argnames=("cfg", "attn_len"))
def _top1(params, cache, tokens, skip_bits, *, cfg, attn_len):
  """The draft's top-1 tokens over a teacher-forced window: model.forward with the skip set as
  data (its `gate`, the mechanism of ModelConfig.draft_skip="runtime"), so that one compile
  serves every skip set; the draft attends to the cache's keys below the window and to its own
  keys in it, as a draft does."""
  out = model_lib.forward(params, cfg, tokens[None], cache, skip=SkipMask.none(cfg.n_layers),
                          attn_len=attn_len, gate=skip_bits)
  return jnp.argmax(model_lib.lm_head(params, cfg, out.hidden[0]), axis=-1)


def held_out_agreement(model, cache, tokens, p: int, skip) -> float:
  """Fraction of positions p..p+H-2 where the draft's top-1 is the next confirmed token (the
  full model's greedy choice); cache holds the full model's keys/values below p."""
  window = jnp.asarray(tokens[p:-1], jnp.int32)
  attn_len = decoding.attn_bucket(len(tokens), cache.capacity)
  top1 = _top1(model.params, cache.rollback(p), window, jnp.asarray(skip.to_list(), bool),
               cfg=model.cfg, attn_len=attn_len)
  return float(np.mean(np.asarray(top1) == tokens[p + 1:]))


def fit(rows, model_name: str) -> dict:
  """Least squares for -log(alpha) = b_attn f_attn + b_mlp f_mlp (no intercept: alpha(0) = 1)."""
  fa = np.asarray([r["f_attn"] for r in rows])
  fm = np.asarray([r["f_mlp"] for r in rows])
  alpha = np.clip([r["held_out_alpha"] for r in rows], 0.02, 1.0)
  (b_attn, b_mlp), *_ = np.linalg.lstsq(np.stack([fa, fm], 1), -np.log(alpha), rcond=None)
  pred = np.exp(-(b_attn * fa + b_mlp * fm))
  return dict(b_attn=float(b_attn), b_mlp=float(b_mlp), n=len(rows),
              median_abs_err=float(np.median(np.abs(pred - alpha))),
              model=model_name, device=rows[0]["device"],
              date=rows[0]["date"], formula="alpha = exp(-(b_attn * f_attn + b_mlp * f_mlp))")


def main(argv):
  del argv
  if _FROM.value:
    rows = [json.loads(line) for line in open(_FROM.value)]
    return write_outputs(rows, len(rows[0]["skip"]), rows[0].get("model", "SmolLM2-135M-Instruct"))
  started = time.perf_counter()
  model = ks.load_model(_MODEL.value, max_context=_MAX_CONTEXT.value)
  profile = (latency.LatencyProfile.load(_PROFILE.value) if _PROFILE.value
             else methods.profile_for(model))
  L = model.cfg.n_layers
  rows, short = [], 0
  for length in map(int, _LENGTHS.value):
    item_id, ids = common.prompt_ids(model, length, index=short)
    short += length < common.SHORT
    point = common.decode_plainly(model, ids, _N_REF.value, _N_REF.value + _HELD_OUT.value + 1)
    cands = []
    for latency_weights in (True, False):
      cands += common.search(model, point, profile, n_ref=_N_REF.value,
                             latency_weights=latency_weights)[0]
    cands = list({c.skip: c for c in cands}.values())
    p = point.context
    later = common.advance(model, ids, point, _HELD_OUT.value)
    full = held_out_agreement(model, later.state.cache, later.tokens, p, SkipMask.none(L))
    for c in cands:
      alpha = held_out_agreement(model, later.state.cache, later.tokens, p, c.skip)
      rows.append(dict(item_id=item_id, prompt_tokens=len(ids), context=p,
                       n_attn_skipped=len(c.skip.attn_skipped),
                       n_mlp_skipped=len(c.skip.mlp_skipped),
                       f_attn=len(c.skip.attn_skipped) / L, f_mlp=len(c.skip.mlp_skipped) / L,
                       in_sample_alpha=c.alpha, held_out_alpha=alpha, skip=c.skip.to_list(),
                       device=latency.device_name(), date=time.strftime("%F"),
                       model=f"{model.name} ({model.dtype})", weights_profile=profile.device))
    print(f"{item_id}: {len(ids)} prompt tokens, {len(cands)} skip sets, full model's own "
          f"agreement {full:.2f} (must be 1.00); {time.perf_counter() - started:.0f} s",
          flush=True)
  write_outputs(rows, 2 * L, f"{model.name} ({model.dtype})")


def estimate_errors(rows) -> list[str]:
  """How well the search's in-sample estimate predicts held-out agreement: its error (in-sample
  minus held-out) over every set, and per prompt over the sets of 9-16 skipped sublayers (the
  drafts the H200 runs chose)."""
  err = np.asarray([r["in_sample_alpha"] - r["held_out_alpha"] for r in rows])
  r_in = np.corrcoef([r["in_sample_alpha"] for r in rows], [r["held_out_alpha"] for r in rows])
  lines = [f"in-sample estimate minus held-out alpha, {len(rows)} sets: mean {err.mean():+.3f}, "
           f"mean |error| {np.abs(err).mean():.3f}, Pearson r {r_in[0, 1]:.3f}",
           "", "| prompt | sets with 9-16 skipped | mean held-out | mean in-sample | mean error |",
           "|---|---|---|---|---|"]
  for item in dict.fromkeys(r["item_id"] for r in rows):
    sub = [r for r in rows if r["item_id"] == item
           and 9 <= r["n_attn_skipped"] + r["n_mlp_skipped"] <= 16]
    if sub:
      held = np.mean([r["held_out_alpha"] for r in sub])
      est = np.mean([r["in_sample_alpha"] for r in sub])
      lines.append(f"| {item} | {len(sub)} | {held:.2f} | {est:.2f} | {est - held:+.2f} |")
  return lines


def write_outputs(rows, n_sublayers: int, model_name: str):
  result = fit(rows, model_name)
  print(json.dumps(result, indent=1))
  lines = [f"| sublayers skipped (of {n_sublayers}) | skip sets | mean held-out alpha | mean "
           "in-sample alpha (smoothed) |", "|---|---|---|---|"]
  bins = [(1, 4), (5, 8), (9, 12), (13, 16), (17, 20), (21, 30), (31, n_sublayers)]
  for lo, hi in bins:
    sub = [r for r in rows if lo <= r["n_attn_skipped"] + r["n_mlp_skipped"] <= hi]
    if sub:
      lines.append(f"| {lo}-{hi} | {len(sub)} | {np.mean([r['held_out_alpha'] for r in sub]):.2f} "
                   f"| {np.mean([r['in_sample_alpha'] for r in sub]):.2f} |")
  lines.append(f"\nfit: alpha = exp(-({result['b_attn']:.2f} f_attn + {result['b_mlp']:.2f} "
               f"f_mlp)), median |error| {result['median_abs_err']:.3f} over {len(rows)} sets")
  lines += ["", *estimate_errors(rows)]
  print("\n".join(lines))
  if not _OUT.value:
    return
  out = pathlib.Path(_OUT.value)
  common.write_jsonl(out / "results.jsonl", rows)
  (out / "fit.json").write_text(json.dumps(result, indent=1) + "\n")
  (out / "summary.md").write_text("\n".join(lines) + "\n")
  share = [r["n_attn_skipped"] / max(r["n_attn_skipped"] + r["n_mlp_skipped"], 1) for r in rows]
  groups = ["mostly attention skipped" if s >= 0.5 else "mostly MLP skipped" for s in share]
  plots.scatter_fit(
      [r["n_attn_skipped"] + r["n_mlp_skipped"] for r in rows],
      [r["held_out_alpha"] for r in rows], out / "alpha_vs_skipped.png", groups=groups,
      xlabel=f"sublayers skipped (of {n_sublayers})",
      ylabel="acceptance alpha (top-1 agreement on held-out tokens)",
      title=f"Acceptance falls as drafts skip more sublayers ({model_name}, measured on "
            f"{rows[0]['device']})",
      annotate=f"fit: alpha = exp(-({result['b_attn']:.2f} f_attn + {result['b_mlp']:.2f} "
               f"f_mlp))")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
