"""A fixed draft's rounds with and without a draft vocabulary (ModelConfig.draft_vocab), on the
same text (CPU, any dtype): what scoring K tokens instead of all costs in acceptance, and what it
could save a draft step.

  python experiments/draft_vocab_rounds.py --model=qwen2.5-coder-1.5b --max_context=4096 \
      --prompts=long:2000 --masks=BITS --gamma=4 --ks=0,16384 --new_tokens=512 \
      --profile=profiles/<the H200 Qwen profile>.json \
      --output_dir=results/cpu/analysis/draft_vocab_rounds_qwen

For each prompt: AR's tokens, then the fixed draft (--masks, --gamma, --threshold) at each K
(0: the whole vocabulary) on one loaded model (the params shared), its tokens per round, draft
forwards per round and acceptance from the decode's own counters, and whether its output equals
AR's. Tokens and drafts per round do not depend on the machine. The "x AR" column puts them on
the profile's device: its step and verify times, the draft step less an ESTIMATE of what K rows
save (the head's other rows' bytes over the profile's read bandwidth; the profile's own
draft_head_s where it was measured with this K), labelled as such.
"""

import dataclasses
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import latency  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "load_model's path or packaged name (default: the "
                             "bundled SmolLM2-135M).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", None, "load_model's max_context.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "load_model's dtype.")
_PROMPTS = flags.DEFINE_list("prompts", ["long:2000"], "long:<document tokens> (common.py).")
_MASKS = flags.DEFINE_list("masks", [], "Skip sets as SkipMask bit strings (default: one "
                           "inner MLP sublayer).")
_GAMMA = flags.DEFINE_integer("gamma", 4, "Draft length.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "The draft's confidence exit.")
_KS = flags.DEFINE_list("ks", ["0", "16384"], "Draft vocabulary sizes (0: the whole).")
_NEW = flags.DEFINE_integer("new_tokens", 256, "Tokens each run decodes.")
_PROFILE = flags.DEFINE_string("profile", None, "A latency profile (JSON) to price the rounds "
                               "with (also the fixed method's, so that none is measured here).")
_HEAD_BYTES = flags.DEFINE_integer("head_bytes", 2, "Bytes per head weight on the profile's "
                                   "device (bfloat16: 2).")
_OUT = flags.DEFINE_string("output_dir", None, "results.jsonl and summary.md go here.")


def head_saving_s(profile, cfg, k: int) -> float:
  """Seconds K head rows save a draft step on the profile's device: measured where the profile
  was (its draft_head_s), else an ESTIMATE, the other rows' bytes over its read bandwidth."""
  if not k:
    return 0.0
  if profile.draft_head_s and profile.model.endswith(f"+draftvocab{k}"):
    return profile.draft_head_s
  if not profile.read_gbps:
    raise app.UsageError(f"--profile {profile.model} on {profile.device} stores no read "
                         "bandwidth to estimate the head's saving with")
  return (cfg.vocab_size - k) * cfg.d_model * _HEAD_BYTES.value / (profile.read_gbps * 1e9)


def main(argv):
  del argv
  started = time.perf_counter()
  base = ks.load_model(_MODEL.value, dtype=_DTYPE.value, max_context=_MAX_CONTEXT.value)
  profile = latency.LatencyProfile.load(_PROFILE.value)
  masks = ([SkipMask.from_list([int(c) for c in bits]) for bits in _MASKS.value]
           or [SkipMask.from_layers(base.cfg.n_layers, mlp=[1])])
  views = {}
  for k in map(int, _KS.value):  # the same params, the draft's head as K says
    views[k] = base.fresh(cfg=dataclasses.replace(base.cfg, draft_vocab=k), profile=profile)
  rows = []
  for spec in _PROMPTS.value:
    kind, value = spec.split(":")
    if kind != "long":
      raise app.UsageError(f"--prompts: {spec!r}, expected long:<tokens>")
    item_id, ids = common.prompt_ids(base, int(value))
    ar = ks.generate(base, ids, _NEW.value, ignore_eos=True)
    attn_len = attn_bucket(len(ids) + _NEW.value, KVCache.capacity_for(base.cfg))
    for skip in masks:
      for k, model in views.items():
        out = ks.generate(model, ids, _NEW.value, method="fixed", ignore_eos=True,
                          config=ks.FixedConfig(skip=skip, gamma=_GAMMA.value,
                                                threshold=_THRESHOLD.value))
        s = out.stats
        rounds = max(s["speculation_steps"], 1)
        tokens, drafts = s["accepted_tokens"] / rounds + 1, s["drafted_tokens"] / rounds
        row = dict(item_id=item_id, prompt_tokens=len(ids), new_tokens=_NEW.value, k=k,
                   skip=skip.to_list(), n_attn_skipped=len(skip.attn_skipped),
                   n_mlp_skipped=len(skip.mlp_skipped), gamma=_GAMMA.value,
                   threshold=_THRESHOLD.value, rounds=s["speculation_steps"],
                   tokens_per_round=tokens, drafts_per_round=drafts,
                   acceptance=s["acceptance_rate"], identical_to_ar=out.output_ids == ar.output_ids,
                   dtype=base.dtype, model=base.name, device=latency.device_name())
        saving = head_saving_s(profile, base.cfg, k)
        t_round = drafts * (profile.t_step(skip, attn_len) - saving) + profile.t_verify(
            _GAMMA.value + 1, attn_len)
        row.update(profile=profile.device, attn_len=attn_len, head_saving_ms=1e3 * saving,
                   x_ar=tokens / t_round * profile.t_step(None, attn_len))
        rows.append(row)
        print(f"{item_id} {row['n_attn_skipped']}+{row['n_mlp_skipped']} g{_GAMMA.value} K={k}: "
              f"tokens/round {tokens:.2f} drafts/round {drafts:.2f} acceptance "
              f"{row['acceptance']:.3f} same as AR {row['identical_to_ar']} | x AR on "
              f"{profile.device} {row['x_ar']:.3f} (head saving {row['head_saving_ms']:.3f} ms)"
              f" ({time.perf_counter() - started:.0f} s)", flush=True)
  lines = ["| prompt | draft (attn + MLP skipped, gamma) | K | tokens / round | drafts / round | "
           "acceptance | x AR on the profile's device (draft step less the head saving) | "
           "same as AR |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    x_ar = f"{r['x_ar']:.3f} (saving {r['head_saving_ms']:.3f} ms)"
    lines.append(f"| {r['item_id']} | {r['n_attn_skipped']} + {r['n_mlp_skipped']}, "
                 f"{r['gamma']} | {r['k'] or 'all'} | {r['tokens_per_round']:.2f} | "
                 f"{r['drafts_per_round']:.2f} | {r['acceptance']:.3f} | {x_ar} | "
                 f"{r['identical_to_ar']} |")
  common.report(lines, rows, _OUT.value)
  if not all(r["identical_to_ar"] for r in rows):
    sys.exit("a draft's output differed from AR's")


if __name__ == "__main__":
  flags.mark_flag_as_required("profile")
  app.run(main)
