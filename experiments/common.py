"""Pieces the analysis scripts share: prompts by length, the search at a real decoding context,
and timing one fixed (skip set, draft length) configuration.

Every analysis runs the project's own compiled programs on the real model; nothing here is
simulated. Times are wall-clock seconds, speeds decode tokens per second (prefill excluded).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, decoding, knapsack, selection  # noqa: E402
from knapspec_jax.controller import confirmed_tokens  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402

# Skip bits (attention then MLP per layer, SkipMask.to_list) of drafts KnapSpec chose: for
# Qwen2.5-Coder-1.5B on an H100 in session 41 (results/h100_qwen/docs_session41/, decisions),
# and for SmolLM2 below.
DRAFTS = {
    # 13 attention + 14 MLP sublayers, gamma 10: chosen at the 28K document's context 28673,
    # 713 tokens into the answer; its windows there accepted 279 of 283 drafted tokens.
    "13+14": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1,
              1, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
    # 8 attention + 16 MLP sublayers, gamma 5: chosen at the 2K document's context 2165; it ran
    # the 2K / 16K / 28K answers at 1.29 / 1.23 / 1.38x AR.
    "8+16": [0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1,
             0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0],
    # SmolLM2-135M-Instruct (30 layers): the drafts KnapSpec chose on Spec-Bench's specbench-131
    # at context 257 with the H100's SmolLM2 profile, on the CPU, searching as one block (15 + 12,
    # gamma 2), in rounds of 1 (16 + 13, gamma 3) and in rounds of 2 (14 + 9, gamma 2)
    # (results/cpu/search_round_len/smollm2_specbench_h100_costs/).
    "smollm2-15+12": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1,
                      1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                      1, 1, 1, 0, 0, 1, 0, 0, 0, 0],
    "smollm2-16+13": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1,
                      1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                      1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    "smollm2-14+9": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1,
                     1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                     1, 0, 1, 0, 0, 0, 0, 0, 0, 0],
}


def named_draft(which: str, n_layers: int, others: str) -> ks.SkipMask:
  """The skip set DRAFTS[which] for a model of n_layers; ValueError naming the known sets (and
  `others`, the names the calling script takes besides them) or the layer mismatch."""
  if which not in DRAFTS:
    raise ValueError(f"no set {which!r} (common.DRAFTS: {sorted(DRAFTS)}, {others})")
  bits = DRAFTS[which]
  if len(bits) != 2 * n_layers:
    raise ValueError(f"the set has {len(bits) // 2} layers, the model {n_layers}")
  return ks.SkipMask.from_list(bits)


SHORT = 300  # prompt lengths below this name a Spec-Bench question instead of a long document


def prompt_item(tokenizer, length: int, index: int = 0) -> dict:
  """length < SHORT: the index-th Spec-Bench question of the subset (one per category, in
  category order); else a summarization document of about `length` tokens."""
  if length < SHORT:
    questions = datasets.spec_bench_subset(1)
    if not 0 <= index < len(questions):
      raise ValueError(f"no Spec-Bench question {index}: the subset has {len(questions)} "
                       f"(0-{len(questions) - 1}, one per category)")
    return questions[index]
  return datasets.long_document_prompt(tokenizer, length)


def prompt_ids(model, length: int, index: int = 0) -> tuple[str, np.ndarray]:
  item = prompt_item(model.tokenizer, length, index)
  return item["id"], datasets.encode(model.tokenizer, item)


@dataclasses.dataclass
class SearchPoint:
  """A decoding state after `n_ref` plain tokens beyond the prompt, ready to be searched."""

  state: decoding.DecodeState
  tokens: np.ndarray  # int32 [n] the confirmed context
  n_ref: int

  @property
  def context(self) -> int:
    return len(self.tokens)


def decode_plainly(model, ids: np.ndarray, n_tokens: int, max_new_tokens: int) -> SearchPoint:
  """Prefill, then `n_tokens` greedy tokens with the full model (budget max_new_tokens)."""
  cache = KVCache.create(model.cfg, ks.api.DTYPES[model.dtype])
  logits, cache = decoding.prefill(model.params, model.cfg, ids, cache, model.compiled)
  state = decoding.init_state(cache, logits, max_new_tokens, ())
  return advance(model, ids, SearchPoint(state, ids, 0), n_tokens)


def advance(model, ids: np.ndarray, point: SearchPoint, n_tokens: int) -> SearchPoint:
  state = decoding.run_ar(model.params, model.cfg, point.state, model.compiled,
                          max_tokens=n_tokens)
  return SearchPoint(state, confirmed_tokens(ids, state), point.n_ref + n_tokens)


def search(model, point: SearchPoint, profile, *, n_ref: int = 16, gamma_max: int = 10,
           latency_weights: bool = True, whole_layers: bool = False,
           threshold: float | None = None):
  """KnapSpec's stage 1 at this context: the DP's candidates with their acceptance estimates
  (and, given the draft's confidence threshold, their selection.ExitRates).

  Returns (candidates, (w_attn, w_mlp), attn_len), attn_len the bucket a draft of gamma_max
  would run at. Weights from the profile at that bucket, or (1, 1) (uniform, TPL).
  """
  p = point.context
  if p - n_ref < 1:
    raise ValueError(f"context {p} holds fewer than n_ref={n_ref} tokens after the first")
  attn_len = decoding.attn_bucket(p + gamma_max + 1, point.state.cache.capacity)
  weights = (knapsack.integer_weights(profile.t_attn(attn_len), profile.t_mlp)
             if latency_weights else (1, 1))
  result = knapsack.search(model.params, model.cfg, point.state.cache, point.tokens[p - n_ref:],
                           p - n_ref, *weights, model.compiled, whole_layers=whole_layers)
  exit_rates = lambda c: (None if threshold is None
                          else selection.exit_rates(c.agree, c.top1_prob, threshold))
  cands = [selection.Candidate(c.skip, selection.smoothed_alpha(c.agreement, n_ref), c.budget,
                               c.cosine, exit_rates(c))
           for c in knapsack.candidates(result) if c.skip.n_skipped]
  return cands, weights, attn_len


def exit_rates_of(model, point: SearchPoint, skip, n_ref: int, threshold: float):
  """selection.ExitRates of one skip set on the search's reference tokens (the last n_ref
  confirmed ones), teacher-forced as the search scores its candidates (knapsack.mask_agreement):
  the draft's top-1 and its probability against the full model's top-1 after each token."""
  p = point.context
  agree, top1_prob = knapsack.mask_agreement(
      model.params, model.cfg, point.state.cache, point.tokens[p - n_ref:], p - n_ref, skip,
      model.compiled, attn_len=decoding.attn_bucket(p, point.state.cache.capacity))
  return selection.exit_rates(agree, top1_prob, threshold)


def method_options(items) -> dict:
  """"knapspec.interval=32,fixed.gamma=3" (or those items as a list) -> {"knapspec":
  {"interval": 32}, "fixed": {"gamma": 3}}: values as JSON where they parse, else strings."""
  if isinstance(items, str):
    items = items.split(",")
  options: dict = {}
  for item in (i.strip() for i in items or () if i.strip()):
    key, sep, value = item.partition("=")
    method, dot, field = key.partition(".")
    if not sep or not dot:
      raise ValueError(f"method option {item!r} is not method.field=value")
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      pass
    options.setdefault(method, {})[field] = value
  return options


def best_draft(cands, profile, attn_len: int, gamma_max: int = 10):
  """The (candidate, gamma, predicted tokens/s) with the highest predicted TPT, no margin."""
  table = selection.tpt_table(cands, profile, attn_len, gamma_max)
  i, g = np.unravel_index(int(np.argmax(table)), table.shape)
  return cands[i], int(g) + 1, float(table[i, g])


def time_fixed(model, ids: np.ndarray, skip, gamma: int, max_new_tokens: int,
               threshold: float = 0.7):
  """Decode with one fixed draft: an untimed run first (it compiles the draft's program and pays
  first-execution costs), then the timed run, which is returned."""
  config = ks.FixedConfig(skip=skip, gamma=gamma, threshold=threshold)
  run = lambda: ks.generate(model, ids, max_new_tokens, method="fixed", config=config,
                            ignore_eos=True)
  run()
  return run()


def time_ar(model, ids: np.ndarray, max_new_tokens: int):
  ks.generate(model, ids, max_new_tokens, ignore_eos=True)
  return ks.generate(model, ids, max_new_tokens, ignore_eos=True)


def pearson(x, y) -> float:
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3 or x.std() == 0 or y.std() == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def write_jsonl(path, rows):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def report(lines: list[str], rows: list[dict], output_dir: str | None) -> pathlib.Path | None:
  """Appends how many runs equalled AR, prints the Markdown summary and, with an output folder,
  writes results.jsonl and summary.md there; returns the folder (None without one)."""
  lines.append(f"\n{sum(r['identical_to_ar'] for r in rows)}/{len(rows)} runs produced AR's "
               "output exactly.")
  print("\n".join(lines))
  if not output_dir:
    return None
  out = pathlib.Path(output_dir)
  write_jsonl(out / "results.jsonl", rows)
  (out / "summary.md").write_text("\n".join(lines) + "\n")
  return out
