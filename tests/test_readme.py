"""The README's API example runs as written: the test reads the code block from README.md."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_command(marker: str) -> str:
  """The command on the line after `<!-- marker -->` in README.md, without its backquotes (as
  .ci/run reads the test command)."""
  lines = README.read_text().splitlines()
  assert f"<!-- {marker} -->" in lines, f"README.md has no <!-- {marker} --> line"
  return lines[lines.index(f"<!-- {marker} -->") + 1].strip().strip("`")


def api_example() -> str:
  """The first python code block of the README's "## The API" section."""
  text = README.read_text()
  section = re.search(r"^## The API\n(.*?)(?=^## )", text, re.S | re.M)
  assert section, "README.md has no '## The API' section"
  block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
  assert block, "the API section has no python code block"
  return block.group(1)


def test_api_example_is_short():
  assert len(api_example().strip().splitlines()) < 20


def test_api_example_runs(capsys):
  code = api_example()
  exec(compile(code, f"{README}:The API", "exec"), {"__name__": "readme_api_example"})
  printed = capsys.readouterr().out
  assert re.search(r"AR [\d.]+ tok/s, KnapSpec [\d.]+ tok/s", printed), printed
