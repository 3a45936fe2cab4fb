"""The colab/ notebooks run from top to bottom on this machine's backend (the CPU in CI), with
smaller budgets than their defaults, and are stored with their outputs cleared.

Each notebook checks its own claims in its cells (speculative output identical to AR's, a
drafting method that did draft), so a notebook that runs is one whose claims held.
"""

from __future__ import annotations

import ast
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))

# Budgets for the suite, set after each notebook's "parameters" cell as papermill would.
OVERRIDES = {
    "01_quickstart.ipynb": {"MAX_NEW_TOKENS": 32, "PAIRS": 2},
    "02_knapsack_search.ipynb": {"LONG_TOKENS": 1200},
    "03_bring_your_own_model.ipynb": {"MAX_NEW_TOKENS": 24},
}


def _read(path: pathlib.Path) -> nbformat.NotebookNode:
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  return nb


def _parameters_cell(nb) -> int:
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
  return tagged[0]


def test_the_three_notebooks_are_there():
  assert [p.name for p in NOTEBOOKS] == sorted(OVERRIDES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
  """No stale numbers: outputs cleared; the overrides name parameters the notebook has."""
  nb = _read(path)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
  params = nb.cells[_parameters_cell(nb)]
  assigned = {t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign)
              for t in node.targets}
  assert set(OVERRIDES[path.name]) <= assigned
  assert "jax.devices()" in "".join(c.source for c in nb.cells[:_parameters_cell(nb) + 3])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
  nb = _read(path)
  overrides = "\n".join(f"{k} = {v!r}" for k, v in OVERRIDES[path.name].items())
  nb.cells.insert(_parameters_cell(nb) + 1, nbformat.v4.new_code_cell(
      overrides, metadata={"tags": ["injected-parameters"]}))
  # kernel "python3" runs this interpreter (jupyter_client substitutes sys.executable); a
  # failing cell raises CellExecutionError with its traceback.
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(COLAB)}}).execute()
