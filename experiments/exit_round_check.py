"""Does the round model under the confidence exit predict what drafts do? (CPU, any dtype)

  python experiments/exit_round_check.py --model=qwen2.5-coder-1.5b --max_context=4096 \
      --profile=profiles/<the H200 Qwen profile>.json --prompts=specbench:3,specbench:0,long:2000 \
      --output_dir=results/cpu/analysis/exit_round_qwen

For each prompt: decode n_ref tokens plainly (after --plain_before more) and run KnapSpec's
search on them (latency weights from --profile), as KnapSpec does at that context. Score every
candidate twice with the profile: the paper's round (gamma drafts accepted at rate alpha;
selection.expected_tokens) and the round under the confidence exit (selection.ExitRates from the
search's per-token agreement and top-1 probabilities; round_tokens, round_drafts). Then decode
`held_out` tokens from that context with each model's best draft (and with --extra_skip, e.g. a
set another method chose on the GPU) as a fixed draft at the threshold, and compare what its
rounds did (tokens and draft forwards per round, from the decode's own counters) with what each
model predicted, and the decode's tokens with plain decoding's. Tokens and drafts per round do
not depend on the machine; the tokens/s columns put them on the profile's device (its step and
verify costs), next to AR's there.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

from absl import app, flags
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, latency, methods, selection  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "load_model's path or packaged name (default: the "
                             "bundled SmolLM2-135M).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", None, "load_model's max_context.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "load_model's dtype.")
_PROFILE = flags.DEFINE_string("profile", None, "Latency profile (JSON) the drafts are scored "
                               "with (default: this device's profile of the model).")
_PROMPTS = flags.DEFINE_list("prompts", ["specbench:3", "long:2000"],
                             "specbench:<index in the subset> or long:<document tokens>.")
_N_REF = flags.DEFINE_integer("n_ref", 16, "Reference tokens of the search (KnapSpec's n_ref).")
_HELD_OUT = flags.DEFINE_integer("held_out", 64, "Tokens each draft decodes after the search; "
                                 "0: only the predictions on the search's tokens, no decodes.")
_PLAIN_BEFORE = flags.DEFINE_integer(
    "plain_before", 0, "Tokens decoded plainly before the n_ref reference tokens: the search "
    "then scores drafts on tokens this far into the generation, not on its first ones.")
_GAMMA_MAX = flags.DEFINE_integer("gamma_max", 10, "Largest draft length scored.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "The draft's confidence exit.")
_EXTRA = flags.DEFINE_string("extra_skip", None, "JSON: {\"label\": [[skip bits], gamma], ...}, "
                             "drafts to decode too (e.g. CLaSp's choice on the H200).")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl and summary.md go here.")


def prompt(model, spec: str) -> tuple[str, np.ndarray]:
  kind, value = spec.split(":")
  if kind == "specbench":
    item = datasets.spec_bench_subset(1)[int(value)]
    return item["id"], datasets.encode(model.tokenizer, item)
  if kind == "long":
    return common.prompt_ids(model, int(value))
  raise ValueError(f"--prompts entry {spec!r}: expected specbench:<i> or long:<tokens>")


def _num(value, digits: int = 2) -> str:
  """A measured figure, or "-" where nothing was decoded (--held_out=0)."""
  return "-" if value is None else f"{value:.{digits}f}"


def _ratio(row: dict, key: str):
  return None if row[key] is None else row[key] / row["ar_tpt"]


def main(argv):
  del argv
  started = time.perf_counter()
  model = ks.load_model(_MODEL.value, dtype=_DTYPE.value, max_context=_MAX_CONTEXT.value)
  if _PROFILE.value:  # the fixed drafts' own predictions use it too: no profile measured here
    model.profile = latency.LatencyProfile.load(_PROFILE.value)
  profile = methods.profile_for(model)
  extra = json.loads(_EXTRA.value) if _EXTRA.value else {}
  rows = []
  for spec in _PROMPTS.value:
    item_id, ids = prompt(model, spec)
    r = _N_REF.value
    point = common.decode_plainly(model, ids, _PLAIN_BEFORE.value + r,
                                  _PLAIN_BEFORE.value + r + _HELD_OUT.value + 1)
    exits, _, attn_len = common.search(model, point, profile, n_ref=r,
                                       gamma_max=_GAMMA_MAX.value, threshold=_THRESHOLD.value)
    closed = [dataclasses.replace(c, exit=None) for c in exits]
    ar_tpt = 1.0 / profile.t_step(None, attn_len)
    context = point.tokens  # the prompt and the n_ref plain tokens
    held_out = _HELD_OUT.value
    ar = ks.generate(model, context, held_out, ignore_eos=True) if held_out else None
    drafts, decoded = {}, {}
    for label, cands in (("closed form", closed), ("exit model", exits)):
      cand, gamma, tpt = common.best_draft(cands, profile, attn_len, _GAMMA_MAX.value)
      drafts[label] = (cand.skip, gamma, tpt)
    for label, (bits, gamma) in extra.items():
      drafts[label] = (SkipMask.from_list(bits), int(gamma), None)
    for label, (skip, gamma, tpt) in drafts.items():
      # The exit model's view of this draft on the search's tokens, whichever model chose it.
      rates = next((c.exit for c in exits if c.skip == skip), None)
      if rates is None:  # not among the search's candidates: score it on the same tokens
        rates = common.exit_rates_of(model, point, skip, r, _THRESHOLD.value)
      alpha = rates.agree
      t_draft = profile.t_step(skip, attn_len)
      t_verify = profile.t_verify(gamma + 1, attn_len)
      measured = dict(measured_tokens=None, measured_drafts=None, rounds=None, acceptance=None,
                      tpt_from_measured_rounds=None, identical_to_ar=None)
      if held_out and (skip, gamma) in decoded:  # the same draft under another label
        measured = decoded[skip, gamma]
      elif held_out:
        out = ks.generate(model, context, held_out, method="fixed",
                          config=ks.FixedConfig(skip=skip, gamma=gamma,
                                                threshold=_THRESHOLD.value), ignore_eos=True)
        s = out.stats
        steps = max(s["speculation_steps"], 1)
        tokens, drafts_per_round = s["accepted_tokens"] / steps + 1, s["drafted_tokens"] / steps
        measured = dict(measured_tokens=tokens, measured_drafts=drafts_per_round,
                        rounds=s["speculation_steps"], acceptance=s["acceptance_rate"],
                        tpt_from_measured_rounds=tokens / (drafts_per_round * t_draft + t_verify),
                        identical_to_ar=out.output_ids == ar.output_ids)
        decoded[skip, gamma] = measured
      row = dict(
          item_id=item_id, context=point.context, draft=label, gamma=gamma,
          n_attn_skipped=len(skip.attn_skipped), n_mlp_skipped=len(skip.mlp_skipped),
          skip=skip.to_list(), alpha_in_sample=alpha, exit_rates=vars(rates),
          predicted_closed_tokens=float(selection.expected_tokens(alpha, gamma)),
          predicted_closed_drafts=gamma,
          predicted_exit_tokens=float(selection.round_tokens(rates, gamma)),
          predicted_exit_drafts=float(selection.round_drafts(rates, gamma)),
          **measured, tpt_chosen_with=tpt, ar_tpt=ar_tpt,
          tpt_closed=selection.draft_tpt(skip, alpha, profile, attn_len, gamma),
          tpt_exit=selection.draft_tpt(skip, alpha, profile, attn_len, gamma, rates),
          profile=profile.device, device=latency.device_name(), dtype=model.dtype,
          model=model.name, date=time.strftime("%F"))
      rows.append(row)
      print(f"{item_id} ctx {point.context} {label:12s} {row['n_attn_skipped']:2d}+"
            f"{row['n_mlp_skipped']:2d} g{gamma}: tokens/round predicted closed "
            f"{row['predicted_closed_tokens']:.2f} exit {row['predicted_exit_tokens']:.2f} "
            f"measured {_num(row['measured_tokens'])}; drafts/round exit "
            f"{row['predicted_exit_drafts']:.2f} measured {_num(row['measured_drafts'])}; x AR "
            f"on {profile.device}: closed {row['tpt_closed'] / ar_tpt:.3f} exit "
            f"{row['tpt_exit'] / ar_tpt:.3f} from measured rounds "
            f"{_num(_ratio(row, 'tpt_from_measured_rounds'), 3)}; same as AR "
            f"{row['identical_to_ar']} ({time.perf_counter() - started:.0f} s)", flush=True)
  lines = ["| prompt | draft | attn + MLP skipped, gamma | tokens/round: closed / exit / "
           "measured | drafts/round: exit / measured | x AR on the profile's device: closed / "
           "exit / from measured rounds | same as AR |", "|---|---|---|---|---|---|---|"]
  for w in rows:
    lines.append(
        f"| {w['item_id']} | {w['draft']} | {w['n_attn_skipped']} + {w['n_mlp_skipped']}, "
        f"{w['gamma']} | {w['predicted_closed_tokens']:.2f} / {w['predicted_exit_tokens']:.2f} "
        f"/ {_num(w['measured_tokens'])} | {w['predicted_exit_drafts']:.2f} / "
        f"{_num(w['measured_drafts'])} | {w['tpt_closed'] / w['ar_tpt']:.3f} / "
        f"{w['tpt_exit'] / w['ar_tpt']:.3f} / {_num(_ratio(w, 'tpt_from_measured_rounds'), 3)} "
        f"| {'-' if w['identical_to_ar'] is None else w['identical_to_ar']} |")
  print("\n".join(lines))
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    common.write_jsonl(out / "results.jsonl", rows)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
