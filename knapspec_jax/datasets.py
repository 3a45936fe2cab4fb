"""Benchmark prompts: Spec-Bench questions and long-context summarization documents built from
Spec-Bench's own long items (../shared/data/README.md)."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

SUMMARIZE = "Summarize the following text.\n\n"


def data_dir() -> pathlib.Path:
  """$KNAPSPEC_DATA, else ../shared/data beside the repository."""
  env = os.environ.get("KNAPSPEC_DATA")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def spec_bench(path=None) -> list[dict]:
  """All Spec-Bench questions: dicts with question_id, category, turns."""
  path = pathlib.Path(path) if path else data_dir() / "spec_bench_question.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: set KNAPSPEC_DATA to the folder holding "
                            "spec_bench_question.jsonl")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spec_bench_subset(per_category: int = 1, categories=None, path=None) -> list[dict]:
  """The first `per_category` questions of each category (a fixed, deterministic subset)."""
  rows = spec_bench(path)
  seen: dict[str, int] = {}
  out = []
  for r in rows:
    cat = r["category"]
    if categories and cat not in categories:
      continue
    if seen.get(cat, 0) < per_category:
      seen[cat] = seen.get(cat, 0) + 1
      out.append({"id": f"specbench-{r['question_id']}", "category": cat,
                  "prompt": r["turns"][0]})
  return out


def long_document_prompt(tokenizer, n_tokens: int, start: int = 0, path=None) -> dict:
  """A "Summarize the following text" request whose chat-templated ids are about n_tokens long,
  joining Spec-Bench summarization articles (then rag passages) from item `start` on."""
  return _long_document(tokenizer, n_tokens, start, _long_pool(path))[0]


def long_documents(tokenizer, n_tokens: int, count: int, path=None) -> list[dict]:
  """`count` long documents of about n_tokens each that share no article: the first is
  long_document_prompt's (start 0), each next one starts at the article after the last one its
  predecessor used (ids longdoc-N-START). Several documents of one length in a process ask what
  a serving model meets: whether what KnapSpec learned on one document (its kept drafts, its
  searches' gains, both per attention bucket) serves the next. Raises ValueError where
  Spec-Bench's long items hold fewer such documents (4 of 28K tokens, 7 of 16K, with Qwen2.5's
  tokenizer and SmolLM2's)."""
  if count < 1:
    raise ValueError(f"long_documents needs count >= 1, got {count}")
  pool, out, start = _long_pool(path), [], 0
  for k in range(count):
    item, used = _long_document(tokenizer, n_tokens, start, pool)
    if start + used > len(pool):  # it wrapped round to articles an earlier document used
      raise ValueError(f"Spec-Bench's long items hold {k} documents of {n_tokens} tokens that "
                       f"share no article, fewer than the {count} asked for")
    out.append(item)
    start += used
  return out


def _long_pool(path=None) -> list[str]:
  """The articles long documents are built from: summarization items, then rag passages."""
  rows = spec_bench(path)
  pool = [r["turns"][0] for r in rows if r["category"] == "summarization"]
  pool += [r["turns"][0] for r in rows if r["category"] == "rag"]
  return [t.removeprefix("Summarize: ").strip() for t in pool]


def _long_document(tokenizer, n_tokens: int, start: int, pool: list[str]) -> tuple[dict, int]:
  """The document from article `start` on (wrapping round the pool), and how many articles it
  used (the last one possibly cut)."""
  texts = pool[start:] + pool[:start]
  # Token counts per article, then trim the last article by words to land near n_tokens.
  overhead = len(_chat_ids(tokenizer, SUMMARIZE))
  parts, total = [], overhead
  for text in texts:
    n = len(tokenizer.encode(text)) + 1
    if total + n <= n_tokens:
      parts.append(text)
      total += n
      continue
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # longest prefix of the article that still fits
      mid = (lo + hi + 1) // 2
      if total + len(tokenizer.encode(" ".join(words[:mid]))) + 1 <= n_tokens:
        lo = mid
      else:
        hi = mid - 1
    if lo:
      parts.append(" ".join(words[:lo]))
    break
  else:
    raise ValueError(f"Spec-Bench's long items hold fewer than {n_tokens} tokens")
  prompt = SUMMARIZE + "\n\n".join(parts)
  return ({"id": f"longdoc-{n_tokens}-{start}", "category": f"long-{n_tokens}",
           "prompt": prompt}, len(parts))


def _chat_ids(tokenizer, text: str) -> list[int]:
  ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                      add_generation_prompt=True, tokenize=True)
  return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def encode(tokenizer, item: dict) -> np.ndarray:
  return np.asarray(_chat_ids(tokenizer, item["prompt"]), np.int32)
