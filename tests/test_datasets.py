"""Long-context documents: several of one length that share no article (datasets.long_documents),
checked against Spec-Bench's file read here on its own (the benchmark's config field that asks
for them: tests/test_experiments.py)."""

from __future__ import annotations

import json

import pytest

from conftest import DATA_DIR

from knapspec_jax import checkpoint, datasets


@pytest.fixture(scope="module")
def tokenizer():
  return checkpoint.read_config_and_tokenizer()[2]  # SmolLM2's, from its GGUF


def _articles() -> list[str]:
  """Spec-Bench's summarization items, then its rag passages, in file order."""
  rows = [json.loads(line) for line in
          (DATA_DIR / "spec_bench_question.jsonl").read_text().splitlines() if line.strip()]
  return [r["turns"][0].removeprefix("Summarize: ").strip()
          for cat in ("summarization", "rag") for r in rows if r["category"] == cat]


def test_documents_of_one_length_share_no_article_and_each_holds_about_n_tokens(tokenizer):
  """Each document, rebuilt from the file: whole articles from the one its id names, in file
  order, then at most one cut to its first words; the next document starts at the article after
  the last one used, so no article is in two documents."""
  docs = datasets.long_documents(tokenizer, 2000, 3)
  assert docs[0] == datasets.long_document_prompt(tokenizer, 2000)  # the one runs used so far
  articles = _articles()
  start = 0
  for doc in docs:
    assert doc["id"] == f"longdoc-2000-{start}" and doc["category"] == "long-2000"
    assert abs(len(datasets.encode(tokenizer, doc)) - 2000) <= 20
    text = doc["prompt"].removeprefix(datasets.SUMMARIZE)
    whole = 0
    while text.startswith(articles[start + whole]):
      text = text[len(articles[start + whole]):].removeprefix("\n\n")
      whole += 1
    assert whole >= 1
    if text:  # the last article, cut: its first words, joined by spaces
      words = text.split(" ")
      assert words == articles[start + whole].split()[:len(words)]
      assert len(words) < len(articles[start + whole].split())
    start += whole + bool(text)
  assert start < len(articles)


def test_asking_for_more_documents_than_the_articles_hold_names_how_many_fit(tokenizer):
  assert len(datasets.long_documents(tokenizer, 28000, 4)) == 4
  with pytest.raises(ValueError, match="hold 4 documents of 28000 tokens that share no article, "
                                       "fewer than the 5 asked for"):
    datasets.long_documents(tokenizer, 28000, 5)
  with pytest.raises(ValueError, match="count >= 1"):
    datasets.long_documents(tokenizer, 2000, 0)
