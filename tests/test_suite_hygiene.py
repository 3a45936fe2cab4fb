"""The suite's own hygiene (conftest): it writes only to a cache directory of its own, which the
processes it starts inherit, and notices a change to the user's cache."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import conftest
from knapspec_jax import checkpoint, compile_cache, latency


def test_the_session_cache_is_a_temporary_directory():
  session = conftest.SESSION_CACHE
  assert os.environ["KNAPSPEC_CACHE"] == str(session) and session.is_dir()
  assert checkpoint.cache_dir() == session
  assert latency.user_dir().parent == session
  xla = compile_cache.persistent_cache_dir()
  assert xla is None or pathlib.Path(xla).parent == session
  for user in conftest.USER_CACHES:
    assert session != user and user not in session.parents


def test_child_processes_inherit_the_session_cache():
  code = "from knapspec_jax import checkpoint; print(checkpoint.cache_dir())"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=conftest.REPO, timeout=120)
  assert out.stdout.strip() == str(conftest.SESSION_CACHE)


def test_snapshot_sees_every_kind_of_change(tmp_path):
  root = tmp_path / "knapspec_jax"
  assert conftest.snapshot_changes(None, conftest.tree_snapshot(root)) == []
  root.mkdir()
  empty = conftest.tree_snapshot(root)
  assert conftest.snapshot_changes(None, empty) == ["created"]
  (root / "profiles").mkdir()
  (root / "profiles" / "p.json").write_text("{}")
  one = conftest.tree_snapshot(root)
  assert "new profiles/p.json" in conftest.snapshot_changes(empty, one)
  assert conftest.snapshot_changes(one, conftest.tree_snapshot(root)) == []
  (root / "profiles" / "p.json").write_text('{"a": 1}')
  assert "changed profiles/p.json" in conftest.snapshot_changes(one, conftest.tree_snapshot(root))
  (root / "profiles" / "p.json").unlink()
  assert "removed profiles/p.json" in conftest.snapshot_changes(one, conftest.tree_snapshot(root))
