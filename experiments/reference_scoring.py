"""How the search scores a draft on its reference tokens, against how the draft's rounds then go
(issue 13: on Qwen2.5-Coder-1.5B's long documents the searches on an answer's first 16 tokens
predicted 0.99-1.07x where the drafts that then ran went 1.18-1.56x; a draft borrowed from
another bucket scored acceptance 0.28-0.33 on a search's 16 tokens and then accepted 0.74-0.78
of its drafted tokens; BENCHMARKS.md 10.45, 10.46).

  python experiments/reference_scoring.py --model=qwen2.5-coder-1.5b --length=2000 \
      --new_tokens=512 --draft=13+14:10 --draft=8+16:5 \
      --realized=results/cpu/acceptance_by_position/qwen_2k.json \
      --output=results/cpu/reference_scoring/qwen_2k.json

The search (knapsack.mask_agreement, the statistics of every candidate) runs the draft over its
R reference tokens as one block: each token's draft attends to the draft's own keys and values
at the block's earlier positions, computed from the draft's residual stream, as if the draft had
written R tokens in one round. In a speculation round the draft's token k sees the full model's
keys and values for every verified position and its own only for the k - 1 drafts before it in
the round (the verify overwrites them). This script scores the same drafts on the same tokens
in several ways, along the answer AR writes, in windows of R tokens:
  block: knapsack.mask_agreement, as the search does;
  prefix: the block's first gamma tokens only (the draft's gamma): a round of gamma drafts
    reaches those depths and no further, where the block's statistics average all R depths;
  rounds of L (--sub_blocks): the window cut into stretches of L tokens, each run by the draft
    as one round would (model.forward of L tokens over the full model's cache up to the
    stretch's start, the draft's own keys within it); L = 1 is each token alone, the view a
    round's first draft has, and L = R is the block again, through the model's own attention;
and with selection's round model (the confidence exit at --threshold) turns each into predicted
tokens and draft forwards per round at the draft's gamma. --realized reads
experiments/acceptance_by_position.py's output for the same model, document and drafts (the
fixed method's windows on this text) and prints the tokens per round the rounds made, per
stretch of the answer, beside the predictions. Float32, so the text is AR's on this CPU.

With --profile (a latency profile's JSON) every prediction and the realized rounds are also
put as speedups over AR at that profile's costs at --attn_len (tokens per round over draft
forwards times the draft's step plus the verify of gamma + 1, against AR's step), with each
scoring's mean error over the realized windows. --scored reads an earlier run's --output
instead of scoring again (no model is loaded):

  python experiments/reference_scoring.py --scored=results/cpu/reference_scoring/qwen_2k.json.gz \
      --realized=results/cpu/acceptance_by_position/qwen_2k.json --attn_len=2048 \
      --profile=profiles/NVIDIA_H100_80GB_HBM3__qwen2.5-coder-1.5b-instruct-q4_k_m.gguf_pallas_rows2_step2_pallas_windows_draftvocab16384__bfloat16.json
"""

import functools
import gzip
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, decoding, knapsack, methods, selection  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from knapspec_jax.latency import LatencyProfile  # noqa: E402

_MODEL = flags.DEFINE_string("model", "", "A packaged name, GGUF or HF directory; '' SmolLM2.")
_LENGTH = flags.DEFINE_integer("length", 2000, "Prompt tokens of the long document; below "
                                "300, a Spec-Bench question instead (--question).")
_QUESTION = flags.DEFINE_integer("question", 0, "With --length below 300: which question of "
                                  "the Spec-Bench subset (one per category, in order).")
_NEW = flags.DEFINE_integer("new_tokens", 512, "Answer tokens AR writes and the windows cover.")
_R = flags.DEFINE_integer("n_ref", 16, "Tokens per window (the search's n_ref).")
_SUB_BLOCKS = flags.DEFINE_list("sub_blocks", ["1", "2", "4", "8"], "Round lengths L to score "
                                 "with (each must divide n_ref).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "The draft's confidence exit.")
_DRAFTS = flags.DEFINE_multi_string("draft", ["13+14:10", "8+16:5"],
                                    "SET:GAMMA, SET a key of common.DRAFTS, alt or none.")
_REALIZED = flags.DEFINE_string("realized", "", "acceptance_by_position.py's JSON for the same "
                                "model, document and drafts (none: predictions only).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", 4096, "load_model's max_context.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the rows (none: print only).")
_SCORED = flags.DEFINE_string("scored", "", "An earlier run's --output (.json or .json.gz) to "
                              "read instead of scoring (no model is loaded).")
_PROFILE = flags.DEFINE_string("profile", "", "A latency profile's JSON: the predictions and the "
                               "realized rounds as speedups over AR at its costs.")
_ATTN_LEN = flags.DEFINE_integer("attn_len", 2048, "The attention bucket of --profile's costs.")

STRETCHES = ((0, 16), (16, 64), (64, 128), (128, 256), (256, 512), (512, 1 << 30))


def parse_draft(text: str, n_layers: int) -> tuple[str, ks.SkipMask, int]:
  """SET:GAMMA -> (SET, its skip set, gamma); SET "alt" is FixedPolicy's default
  (methods.default_fixed_skip), "none" the full model (both scorings must then agree on every
  token: the check that the cache and the text line up)."""
  try:
    which, gamma = text.split(":")
    gamma = int(gamma)
  except ValueError:
    raise app.UsageError(f"--draft must be SET:GAMMA, got {text!r}") from None
  if which == "none":
    return which, ks.SkipMask.from_layers(n_layers, (), ()), gamma
  if which == "alt":
    return which, methods.default_fixed_skip(n_layers), gamma
  try:
    return which, common.named_draft(which, n_layers, "alt, none"), gamma
  except ValueError as e:
    raise app.UsageError(f"--draft {text!r}: {e}") from None


@functools.partial(jax.jit, static_argnames=("cfg", "skip", "attn_len"))
def round_draft(params, tokens, cache, *, cfg, skip, attn_len):
  """The draft's top-1 and its probability after each of `tokens` [L] at cache.length + [0, L):
  the full model's keys and values (the cache as it wrote them) before the first, the draft's
  own within the L, as in a round that drafts them."""
  out = model_lib.forward(params, cfg, tokens[None], cache, skip=skip, attn_len=attn_len)
  logits = model_lib.lm_head(params, cfg, out.hidden)[0].astype(jnp.float32)
  return (jnp.argmax(logits, -1).astype(jnp.int32),
          jnp.exp(logits.max(-1) - jax.nn.logsumexp(logits, -1)))


def rounds_scoring(params, cfg, cache, text, truth, p0: int, r: int, sub: int, skip):
  """(agree [r] bool, top1 probability [r]) of the draft on text[p0:p0 + r] in rounds of `sub`."""
  agree, probs = [], []
  for s in range(p0, p0 + r, sub):
    top, prob = round_draft(params, jnp.asarray(text[s:s + sub]), cache.rollback(s), cfg=cfg,
                            skip=skip, attn_len=decoding.attn_bucket(s + sub, cache.capacity))
    agree += [bool(t) for t in np.asarray(top) == truth[s:s + sub]]
    probs += [float(q) for q in np.asarray(prob)]
  return agree, probs


def predicted_round(agree, prob, gamma: int, threshold: float) -> tuple[float, float]:
  """(tokens, draft forwards) per round, selection's model of the round under the exit."""
  rates = selection.exit_rates(agree, prob, threshold)
  return (float(selection.round_tokens(rates, gamma)),
          float(selection.round_drafts(rates, gamma)))


def realized_rows(path: str, name: str) -> list[dict]:
  """The windows acceptance_by_position.py's output at `path` holds for draft `name` ([] where
  there is no path or no such draft)."""
  if not path:
    return []
  for d in json.loads(pathlib.Path(path).read_text())["drafts"]:
    if d["draft"] == name:
      return d["rows"]
  return []


def rounds_in_order(agree, gamma: int) -> float:
  """Tokens per round of gamma drafts (no exit) run over the agreement bits in their order: each
  round accepts the agreeing drafts up to the first disagreement and adds the verify's token,
  the next starts after it. Against selection.expected_tokens at the bits' mean (each token
  independent) it shows whether agreements that come in runs lengthen the rounds."""
  agree, pos, tokens, rounds = list(agree), 0, 0, 0
  while True:
    k = 0
    while k < gamma and pos + k < len(agree) and agree[pos + k]:
      k += 1
    if k < gamma and pos + k >= len(agree):
      break  # the bits ran out before the round ended: it is left out, not cut short
    tokens, rounds, pos = tokens + k + 1, rounds + 1, pos + k + 1
  return tokens / rounds if rounds else float("nan")


def runs_against_independence(run: dict):
  """Prints, per draft and scoring, the tokens per round (no exit) the agreement bits give in
  the answer's order (rounds_in_order) beside the closed form at their mean (independent
  tokens): where the first is larger, runs of agreement make the closed form pessimistic."""
  for d in run["drafts"]:
    keys = ["block"] + [f"L{sub}" for sub in d.get("sub_blocks", [])]
    line = (f"draft {d['draft']} (gamma {d['gamma']}), tokens a round without the exit, in "
            "order / independent:")
    for k in keys:
      bits = [a for w in d["windows"] for a in w[k + "_agree"]]
      line += (f" {k} {rounds_in_order(bits, d['gamma']):.2f} / "
               f"{float(selection.expected_tokens(np.mean(bits), d['gamma'])):.2f}")
    print(line)


def speedups(run: dict, realized_path: str, profile: LatencyProfile, attn_len: int):
  """Prints each scoring's predicted speedup over AR per stretch of the answer at the profile's
  costs, the realized rounds' beside it, and each scoring's mean error (weighted by the realized
  windows in each stretch)."""
  ar = 1 / profile.t_step(None, attn_len)
  for d in run["drafts"]:
    skip, gamma = ks.SkipMask.from_list(d["skip"]), d["gamma"]
    step, verify = profile.t_step(skip, attn_len), profile.t_verify(gamma + 1, attn_len)
    speed = lambda tokens, drafts: tokens / (drafts * step + verify) / ar
    keys = ["block"] + [f"L{sub}" for sub in d.get("sub_blocks", [])] + (
        ["prefix"] if "prefix_tokens" in d["windows"][0] else [])  # none before session 43
    realized = realized_rows(realized_path, d["draft"])
    if not realized:
      print(f"draft {d['draft']}: no realized rounds in {realized_path}")
      continue
    errors = {k: [] for k in keys}
    print(f"draft {d['draft']} (gamma {gamma}) x AR at the profile's costs, attention {attn_len}")
    for lo, hi in STRETCHES:
      part = [w for w in d["windows"] if lo <= w["answer_token"] < hi]
      done = [x for x in realized if lo <= x["answer_token"] < hi]
      if not part or not done:
        continue
      rounds = sum(x["rounds"] for x in done)
      real = speed(sum(x["tokens"] for x in done) / rounds,
                   sum(x["drafted"] for x in done) / rounds)
      line = f"  answer tokens {lo:4d}-{hi:4d}: realized {real:.2f}x;"
      for k in keys:
        got = float(np.mean([speed(w[k + "_tokens"], w[k + "_drafts"]) for w in part]))
        errors[k].append((got - real, len(done)))
        line += f" {k} {got:.2f}"
      print(line)
    for k, e in errors.items():
      err, weight = np.array([a for a, _ in e]), np.array([b for _, b in e])
      print(f"  {k}: mean error {np.average(err, weights=weight):+.3f}x, mean |error| "
            f"{np.average(np.abs(err), weights=weight):.3f}x")


def main(argv):
  del argv
  if _SCORED.value:
    opener = gzip.open if _SCORED.value.endswith(".gz") else open
    with opener(_SCORED.value, "rt") as f:
      run = json.load(f)
    if not (_PROFILE.value and _REALIZED.value):
      raise app.UsageError("--scored needs --profile and --realized")
    speedups(run, _REALIZED.value, LatencyProfile.load(_PROFILE.value), _ATTN_LEN.value)
    runs_against_independence(run)
    return
  model = ks.load_model(_MODEL.value or None, max_context=_MAX_CONTEXT.value)
  params, cfg, r = model.params, model.cfg, _R.value
  drafts = [parse_draft(text, cfg.n_layers) for text in _DRAFTS.value]
  subs = [int(x) for x in _SUB_BLOCKS.value]
  if any(sub < 1 or r % sub for sub in subs):
    raise app.UsageError(f"--sub_blocks {subs}: each must be a positive divisor of n_ref={r}")
  try:
    item = common.prompt_item(model.tokenizer, _LENGTH.value, _QUESTION.value)
  except ValueError as e:
    raise app.UsageError(f"--question: {e}") from None
  ids = datasets.encode(model.tokenizer, item)
  answer = ks.generate(model, ids, _NEW.value, method="ar", ignore_eos=True).output_ids
  n_prompt = len(ids)
  text = np.asarray(list(ids) + list(answer), np.int32)
  print(f"{item['id']}: {n_prompt} prompt tokens, {len(answer)} answer tokens", flush=True)

  # The full model's cache over the prompt and the answer, as the verifies leave it.
  cache = KVCache.create(cfg, jnp.dtype(model.dtype), sharding=model.cache_sharding)
  _, cache = decoding.prefill(params, cfg, text, cache, model.compiled)
  truth = text[1:]  # the full model's greedy token after each position (AR's text, float32)

  out = []
  for name, skip, gamma in drafts:
    windows = []
    for w in range(0, len(answer) - r, r):  # positions n_prompt + w .. + r - 1
      p0 = n_prompt + w
      block_agree, block_prob = knapsack.mask_agreement(
          params, cfg, cache, jnp.asarray(text[p0:p0 + r]), p0, skip, model.compiled,
          attn_len=decoding.attn_bucket(p0 + r, cache.capacity))
      row = dict(answer_token=w, block_agree=[bool(a) for a in block_agree])
      row["block_tokens"], row["block_drafts"] = predicted_round(block_agree, block_prob, gamma,
                                                                 _THRESHOLD.value)
      # the block's first gamma tokens only: the depths a round of gamma drafts reaches
      row["prefix_agree"] = row["block_agree"][:gamma]
      row["prefix_tokens"], row["prefix_drafts"] = predicted_round(
          block_agree[:gamma], block_prob[:gamma], gamma, _THRESHOLD.value)
      line = f"  {name} g{gamma} answer {w:4d}: block {int(np.sum(block_agree)):2d}/{r}"
      for sub in subs:
        agree, prob = rounds_scoring(params, cfg, cache, text, truth, p0, r, sub, skip)
        row[f"L{sub}_agree"] = agree
        row[f"L{sub}_tokens"], row[f"L{sub}_drafts"] = predicted_round(agree, prob, gamma,
                                                                       _THRESHOLD.value)
        line += f", L{sub} {sum(agree):2d}/{r}"
      windows.append(row)
      print(line + " agree", flush=True)
    realized = realized_rows(_REALIZED.value, name)
    print(f"draft {name} (gamma {gamma}), tokens a round: predicted from windows of {r} "
          f"(block, rounds of L, the block's first gamma), and realized by the fixed method's "
          "rounds")
    by_position = np.mean([win["block_agree"] for win in windows], axis=0)
    print("  block agreement by position in the window: " +
          " ".join(f"{a:.2f}" for a in by_position))
    for lo, hi in STRETCHES:
      part = [win for win in windows if lo <= win["answer_token"] < hi]
      if not part:
        continue
      line = f"  answer tokens {lo:4d}-{min(hi, len(answer)):4d}:"
      for key in ["block"] + [f"L{sub}" for sub in subs] + ["prefix"]:
        line += (f" {key} {np.mean([x[key + '_tokens'] for x in part]):5.2f} "
                 f"({np.mean([np.mean(x[key + '_agree']) for x in part]):.2f})")
      done = [x for x in realized if lo <= x["answer_token"] < hi]
      if done:
        tok, rnd = sum(x["tokens"] for x in done), sum(x["rounds"] for x in done)
        line += f"; realized {tok / rnd:5.2f} ({len(done)} windows)"
      print(line, flush=True)
    out.append(dict(draft=name, gamma=gamma, threshold=_THRESHOLD.value, n_ref=r, sub_blocks=subs,
                    skip=skip.to_list(), windows=windows,
                    block_agree_by_position=[float(a) for a in by_position]))
  run = dict(model=model.source, prompt=item["id"], prompt_tokens=n_prompt,
             new_tokens=len(answer), drafts=out)
  if _PROFILE.value and _REALIZED.value:
    speedups(run, _REALIZED.value, LatencyProfile.load(_PROFILE.value), _ATTN_LEN.value)
  if _OUTPUT.value:
    path = pathlib.Path(_OUTPUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
