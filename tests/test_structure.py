"""The package's seams, checked on its sources: no module reaches into another's private names.

A name with a leading underscore is its module's own business; a caller elsewhere that uses it
(`api._ar_warmup`, `from x import _helper`) couples itself to an implementation detail that
its owner may change without looking elsewhere (issue 15). The check parses every source file
of the package, the tests and the experiments with `ast` and reports each offending use by file
and line. A module is "ours" when it is knapspec_jax or under it, or a sibling script of the
same folder (tests import conftest and test_speculative; experiments import common); dunder
names (`__file__`) are public by convention. Third-party privates (`jax._src`) are not ours to
rename, so they are not checked.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("knapspec_jax", "tests", "experiments")


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(module: str, siblings: set[str]) -> bool:
  root = module.split(".")[0]
  return root == "knapspec_jax" or root in siblings


def private_uses(path: pathlib.Path, siblings: set[str]) -> list[str]:
  """'file:line: what' for each private name of another of our modules that `path` uses:
  `from ours import _x`, and `m._x` / `m.sub._x` where m was bound by an import of ours."""
  tree = ast.parse(path.read_text(), filename=str(path))
  where = lambda node: f"{path.relative_to(REPO)}:{node.lineno}"
  imported = {}  # local name -> the module or object it was imported as
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if _ours(alias.name, siblings):
          local = alias.asname or alias.name.split(".")[0]
          imported[local] = alias.name if alias.asname else local
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if not _ours(node.module, siblings):
        continue
      for alias in node.names:
        if _private(alias.name):
          found.append(f"{where(node)}: from {node.module} import {alias.name}")
        imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and _private(node.attr):
      base = node.value
      while isinstance(base, ast.Attribute):
        base = base.value
      if isinstance(base, ast.Name) and base.id in imported:
        found.append(f"{where(node)}: {ast.unparse(node)} ({base.id} is "
                     f"{imported[base.id]})")
    elif isinstance(node, ast.Call) and _by_name(node, imported):
      found.append(f"{where(node)}: {ast.unparse(node)}")
  return sorted(found, key=lambda line: int(line.split(":")[1]))


def _by_name(call: ast.Call, imported: dict) -> bool:
  """getattr(m, "_x"), setattr(...), monkeypatch.setattr(m, "_x", ...): the same use, spelled
  with the name as a string."""
  func = call.func
  name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
  if name not in ("getattr", "setattr", "delattr", "hasattr") or len(call.args) < 2:
    return False
  target, attr = call.args[:2]
  return (isinstance(target, ast.Name) and target.id in imported
          and isinstance(attr, ast.Constant) and isinstance(attr.value, str)
          and _private(attr.value))


def _files():
  """Every .py file under SOURCES, subfolders included (experiments/gpu), each with the
  stems of its own folder's files as its siblings."""
  for folder in SOURCES:
    for directory in sorted({p.parent for p in (REPO / folder).rglob("*.py")}):
      paths = sorted(directory.glob("*.py"))
      siblings = {p.stem for p in paths}
      for path in paths:
        yield path, siblings


def test_no_module_uses_another_modules_private_names():
  found = [line for path, siblings in _files() for line in private_uses(path, siblings)]
  assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_check_sees_each_kind_of_private_use(tmp_path, monkeypatch):
  """The check is not vacuous: each form of the use it forbids is reported with its line, and
  an object's own private attribute or a third-party private is not."""
  monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
  source = tmp_path / "example.py"
  source.write_text(
      "import jax\n"
      "import knapspec_jax.api\n"
      "from knapspec_jax import api, decoding as dec\n"
      "from knapspec_jax.api import _ar_warmup\n"
      "import common\n"
      "api._abstract_state(None)\n"
      "dec._segment\n"
      "knapspec_jax.api._METHODS\n"
      "common._helper()\n"
      "jax._src\n"
      "self._own\n"
      "api.__file__\n"
      "monkeypatch.setattr(dec, '_helper', None)\n"
      "monkeypatch.setattr(dec, 'public', None)\n")
  found = private_uses(source, {"common"})
  assert [line.split(":")[1] for line in found] == ["4", "6", "7", "8", "9", "13"], found
  assert "from knapspec_jax.api import _ar_warmup" in found[0]


# model.py's parts of a layer: a caller elsewhere that strings them together writes the layer body
# a second time (the knapsack search did, twice); it calls model.attention_sublayer,
# mlp_sublayer or block, with its own attention where it needs one.
LAYER_PARTS = {"attention_qkv", "mlp"}


def test_the_layer_body_is_written_once():
  found = []
  for path, _ in _files():
    if path.name == "model.py":
      continue
    tree = ast.parse(path.read_text(), filename=str(path))
    found += [f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}"
              for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr in LAYER_PARTS
              and isinstance(node.value, ast.Name) and node.value.id in ("model", "model_lib")]
  assert not found, "layer parts used outside model.py:\n" + "\n".join(found)


# The package's layers, top down: a walk from api.generate to the model's block goes one way
# (issue 15). engine.py (a loaded model's runtime pieces) sits below methods, above decoding.
LAYERS = ("api", "methods", "controller", "speculative", "decoding", "model")


def package_imports(path: pathlib.Path, module_level: bool) -> set[str]:
  """The modules of knapspec_jax that the module at `path` imports: at module level only (what
  runs when it loads), or anywhere in it, function bodies' deferred imports included."""
  tree = ast.parse(path.read_text(), filename=str(path))
  nodes = tree.body if module_level else ast.walk(tree)
  found = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    else:
      continue
    for name in names:
      parts = name.split(".")
      if parts[0] == "knapspec_jax" and len(parts) > 1 and (REPO / "knapspec_jax" /
                                                             f"{parts[1]}.py").exists():
        found.add(parts[1])
  return found


def import_graph(module_level: bool = True) -> dict[str, set[str]]:
  """module -> the package's modules it imports, for every module but the package's __init__
  (which re-exports the public names of the modules under it)."""
  return {path.stem: package_imports(path, module_level) - {path.stem}
          for path in sorted((REPO / "knapspec_jax").glob("*.py"))
          if path.name != "__init__.py"}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), list(graph[start])
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo += graph.get(module, ())
  return seen


def test_the_import_graph_is_layered_with_api_on_top():
  """No module imports api (a deferred import in a function included), the modules' imports
  form no cycle, and the layers go one way down: each imports the next, none one above it.
  The acyclicity is checked on module-level imports: a deferred import, run after every module
  has loaded, is how checkpoint reaches packaged_models, which imports checkpoint."""
  everywhere = import_graph(module_level=False)
  assert not [m for m, deps in everywhere.items() if "api" in deps], (
      "modules below api that import it: "
      + str(sorted(m for m, deps in everywhere.items() if "api" in deps)))
  graph = import_graph()
  cycles = sorted(m for m in graph if m in reachable(graph, m))
  assert not cycles, f"modules on an import cycle: {cycles}"
  for upper, lower in zip(LAYERS, LAYERS[1:]):
    assert lower in graph[upper], f"{upper} does not import {lower}"
  for i, lower in enumerate(LAYERS):
    above = set(LAYERS[:i]) & reachable(graph, lower)
    assert not above, f"{lower} reaches the layers above it: {sorted(above)}"
  assert {"api", "methods", "controller"}.isdisjoint(reachable(graph, "engine"))
  assert "engine" in graph["methods"] and "engine" in graph["api"]
