"""The README's main command, copied verbatim, in a fresh clone and a fresh venv with no torch.

Slow (a venv and its packages, from pip's cache where it has them; then the model and two
generations): it runs in CI's second step, `pytest -m install` (README, "Checks that install").
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from test_readme import README, readme_command

pytestmark = pytest.mark.install
REPO = README.parent


def _clone(dest: pathlib.Path) -> pathlib.Path:
  """The committed and working-tree files git knows of (a clone's content), without any venv."""
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.splitlines()
  for name in files:
    if (REPO / name).is_file():
      (dest / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, dest / name)
  return dest


def test_main_command_runs_without_torch(tmp_path):
  command = readme_command("main-command")
  repo = _clone(tmp_path / "repo")
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
  venv_bin = str(pathlib.Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
  env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
  env["KNAPSPEC_CACHE"] = str(tmp_path / "cache")  # never the user's cache
  run = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=1500)
  out = run.stdout + run.stderr
  assert run.returncode == 0, out[-4000:]
  # the median of three timed pairs beside AR's own spread, then what KnapSpec decided
  assert re.search(r"speedup over AR: [\d.]+x decode, [\d.]+x end-to-end \(medians of 3 paired "
                   r"runs; .*AR's own runs [\d.]+-[\d.]+x their median\); output identical to AR",
                   out), out[-4000:]
  assert re.search(r"knapspec drafted in \d+ of \d+ decode windows", out), out[-4000:]
  assert re.search(r"knapspec: \d+ tokens, decode [\d.]+ tok/s", out), out[-4000:]
  assert re.search(r"ar: \d+ tokens, decode [\d.]+ tok/s", out), out[-4000:]
  no_torch = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "import torch"],
                            capture_output=True, text=True)
  assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, (
      "the main command's venv has torch: the test proves nothing")
