"""How a fixed draft's rounds go along an answer: tokens per round and accepted drafted tokens
per window of a few rounds, against how far into the answer each window starts (issue 13: on
Qwen2.5-Coder-1.5B's long documents the searches on an answer's first 16 tokens predicted
1.02-1.07x where drafts further in ran 1.23-1.74x, and a gamma-10 draft's trial at the answer's
first token drafted one token a round; BENCHMARKS.md 10.45).

  python experiments/acceptance_by_position.py --model=qwen2.5-coder-1.5b --length=2000 \
      --new_tokens=512 --draft=0:13+14:10 --draft=1:8+16:5 \
      --output=results/cpu/acceptance_by_position/qwen_2k.json

Each --draft is NAME:A+M:GAMMA with A attention and M MLP sublayers skipped as listed in
common.DRAFTS (the skip sets KnapSpec chose on an H100 in session 41), or NAME:auto:GAMMA for
methods.FixedPolicy's default set. The fixed method decodes the document's answer greedily with
it (the confidence exit at --threshold, as KnapSpec drafts), one window per --rounds rounds;
every window's log gives its tokens, rounds, drafted and accepted tokens. Output is checked
against AR's greedy tokens (lossless: the verify decides every token), so the rounds are the
ones the text AR writes would give.
"""

import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets  # noqa: E402

_MODEL = flags.DEFINE_string("model", "", "A packaged name, GGUF or HF directory; '' SmolLM2.")
_LENGTH = flags.DEFINE_integer("length", 2000, "Prompt tokens of the long document; below "
                                "300, a Spec-Bench question instead (--question).")
_QUESTION = flags.DEFINE_integer("question", 0, "With --length below 300: which question of "
                                  "the Spec-Bench subset (one per category, in order).")
_NEW = flags.DEFINE_integer("new_tokens", 512, "Answer tokens to decode.")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "Speculation rounds per window (one log row each).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "The draft's confidence exit.")
_DRAFTS = flags.DEFINE_multi_string("draft", ["auto:auto:4"], "NAME:SET:GAMMA, SET a key of "
                                    "common.DRAFTS or 'auto' (FixedPolicy's default set).")
_MAX_CONTEXT = flags.DEFINE_integer("max_context", 4096, "load_model's max_context.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON file for the rows (none: print only).")


def parse_draft(text: str, n_layers: int) -> tuple[str, ks.SkipMask | None, int]:
  """NAME:SET:GAMMA -> (name, skip set or None for FixedPolicy's default, gamma)."""
  try:
    name, which, gamma = text.split(":")
    gamma = int(gamma)
  except ValueError:
    raise app.UsageError(f"--draft must be NAME:SET:GAMMA, got {text!r}") from None
  if which == "auto":
    return name, None, gamma
  try:
    return name, common.named_draft(which, n_layers, "auto"), gamma
  except ValueError as e:
    raise app.UsageError(f"--draft {text!r}: {e}") from None


def position_rows(window_log: list[dict], prompt_tokens: int) -> list[dict]:
  """One row per drafting window: where it starts in the answer, its tokens per round and the
  share of its drafted tokens the verify accepted."""
  rows = []
  for w in window_log:
    if not w["rounds"]:
      continue
    rows.append(dict(answer_token=w["context"] - prompt_tokens, tokens=w["tokens"],
                     rounds=w["rounds"], drafted=w["drafted"], accepted=w["accepted"],
                     tokens_per_round=w["tokens"] / w["rounds"],
                     accepted_share=w["accepted"] / w["drafted"] if w["drafted"] else None))
  return rows


def main(argv):
  del argv
  model = ks.load_model(_MODEL.value or None, max_context=_MAX_CONTEXT.value)
  drafts = [parse_draft(text, model.cfg.n_layers) for text in _DRAFTS.value]
  try:
    item = common.prompt_item(model.tokenizer, _LENGTH.value, _QUESTION.value)
  except ValueError as e:
    raise app.UsageError(f"--question: {e}") from None
  ids = datasets.encode(model.tokenizer, item)
  want = ks.generate(model, ids, _NEW.value, method="ar", ignore_eos=True).output_ids
  print(f"{item['id']}: {len(ids)} prompt tokens, {_NEW.value} answer tokens", flush=True)
  out = []
  for name, skip, gamma in drafts:
    config = ks.FixedConfig(skip=skip, gamma=gamma, threshold=_THRESHOLD.value,
                            interval=_ROUNDS.value)
    got = ks.generate(model, ids, _NEW.value, method="fixed", ignore_eos=True, config=config)
    if got.output_ids != want:
      raise SystemExit(f"draft {name}: output differs from AR's (the method must be lossless)")
    rows = position_rows(got.stats["window_log"], len(ids))
    out.append(dict(draft=name, gamma=gamma, threshold=_THRESHOLD.value,
                    skip=None if skip is None else skip.to_list(), rows=rows))
    print(f"draft {name} (gamma {gamma}): windows of {_ROUNDS.value} rounds", flush=True)
    for lo, hi in ((0, 16), (16, 64), (64, 128), (128, 256), (256, 512), (512, 1 << 30)):
      part = [r for r in rows if lo <= r["answer_token"] < hi]
      if part:
        tok, rnd = sum(r["tokens"] for r in part), sum(r["rounds"] for r in part)
        dr, ac = sum(r["drafted"] for r in part), sum(r["accepted"] for r in part)
        print(f"  answer tokens {lo:4d}-{min(hi, _NEW.value):4d}: {tok / rnd:5.2f} tokens a round, "
              f"{dr / rnd:5.2f} drafted a round, {ac}/{dr} accepted "
              f"({ac / max(dr, 1):.2f}), {len(part)} windows", flush=True)
  if _OUTPUT.value:
    path = pathlib.Path(_OUTPUT.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(model=model.source, prompt=item["id"],
                                    prompt_tokens=len(ids), new_tokens=_NEW.value,
                                    drafts=out), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
