"""Shared fixtures: the real SmolLM2 model (JAX and transformers, loaded once per session), tiny
random transformers models of each supported architecture saved as HF directories, Spec-Bench
prompts, and an XLA compile counter that does not rely on the project's own bookkeeping.

On a CPU other than the CI CPU the session stores the CI CPU's committed SmolLM2 profile under
this CPU's name (ci_cpu_profile_for_this_cpu), so no test measures one: the suite does the same
work on every CPU.

The session runs with a cache directory of its own ($KNAPSPEC_CACHE: converted params, latency
profiles, XLA's on-disk programs; the executable store off), inherited by the subprocesses and
notebook kernels the tests start, and checks at its end that the user's cache
(~/.cache/knapspec_jax) was left as it was.
After each test module, the programs compiled for the shared models and JAX's own caches are
dropped, so memory does not grow with the number of modules (release_compiled_programs).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a plain checkout too, without `pip install -e .`
  sys.path.insert(0, str(REPO))
DATA_DIR = REPO.parent / "shared" / "data"

# ------------------------------------------------------------------------------- cache isolation

# Where knapspec_jax writes when $KNAPSPEC_CACHE is unset (checkpoint.cache_dir), and the user's
# own $KNAPSPEC_CACHE if set: neither may change during the session.
USER_CACHES = tuple(dict.fromkeys(
    [pathlib.Path.home() / ".cache" / "knapspec_jax"]
    + ([pathlib.Path(os.environ["KNAPSPEC_CACHE"])] if os.environ.get("KNAPSPEC_CACHE") else [])))
SESSION_CACHE = pathlib.Path(tempfile.mkdtemp(prefix="knapspec_test_cache_"))
os.environ["KNAPSPEC_CACHE"] = str(SESSION_CACHE)  # set before anything reads it
# The executable store (compile_cache.executable_store_dir) off for the session and the processes
# it starts: with it on, a test would load the programs an earlier test compiled, and the tests
# that count compiles, or that expect a compile inside a decode, would see loads instead.
# JAX's persistent cache stays on (a read of it still counts as a compile). The store's own
# tests, and test_persistent_cache's, set KNAPSPEC_EXEC_CACHE for their processes themselves.
os.environ["KNAPSPEC_EXEC_CACHE"] = "0"


def tree_snapshot(root: pathlib.Path) -> dict[str, tuple[int, int]] | None:
  """{relative path: (size, mtime_ns)} of every file and folder under root; None: no root."""
  if not root.exists():
    return None
  snap = {".": (0, root.stat().st_mtime_ns)}
  for path in root.rglob("*"):
    try:
      st = path.lstat()
    except OSError:  # removed while listing
      continue
    snap[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
  return snap


def snapshot_changes(before, after) -> list[str]:
  """What differs between two tree_snapshot()s, one line per path."""
  if before == after:
    return []
  if before is None:
    return ["created"] + sorted(k for k in after if k != ".")[:20]
  if after is None:
    return ["removed"]
  lines = [f"new {k}" for k in sorted(set(after) - set(before))]
  lines += [f"removed {k}" for k in sorted(set(before) - set(after))]
  lines += [f"changed {k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]]
  return lines[:20]


_USER_CACHE_BEFORE = {root: tree_snapshot(root) for root in USER_CACHES}


def pytest_sessionfinish(session, exitstatus):
  """Fails the session when it wrote into the user's cache; removes the session's own cache."""
  changes = {root: snapshot_changes(before, tree_snapshot(root))
             for root, before in _USER_CACHE_BEFORE.items()}
  changes = {root: lines for root, lines in changes.items() if lines}
  if changes:
    report = session.config.pluginmanager.get_plugin("terminalreporter")
    for root, lines in changes.items():
      message = (f"the test session changed the user's cache {root} (it must write only to "
                 f"$KNAPSPEC_CACHE={SESSION_CACHE}; another process writing there meanwhile "
                 f"shows here too): " + "; ".join(lines))
      if report is not None:
        report.line("")  # after -q's progress dots
        report.write_line(message, red=True, bold=True)
      else:
        print(message, file=sys.stderr)
    if session.exitstatus == 0:
      session.exitstatus = pytest.ExitCode.TESTS_FAILED
  shutil.rmtree(SESSION_CACHE, ignore_errors=True)


import jax  # noqa: E402
import torch  # noqa: E402

from knapspec_jax import api, checkpoint, packaged_models  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402

# Once XLA's CPU thread pool is up, torch's multi-threaded kernels on this 2-core machine ran
# ~8x slower (64 greedy SmolLM2 tokens: 20 s instead of 3 s); one torch thread avoids it.
torch.set_num_threads(1)

# ------------------------------------------------------------------------------ compile counter

# jax records this event once per XLA backend compile (jit, AOT .compile() and eager ops alike);
# a persistent-compilation-cache retrieval replaces the compile, so it is counted as one too.
_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                   "/jax/compilation_cache/cache_retrieval_time_sec")


class CompileCounter:
  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.events: list[tuple[str, dict]] = []

  def __call__(self, event: str, duration: float, **kwargs):
    if event in _COMPILE_EVENTS:
      with self._lock:
        self.count += 1
        self.events.append((event, kwargs))


_COUNTER = CompileCounter()
jax.monitoring.register_event_duration_secs_listener(_COUNTER)


@pytest.fixture(scope="session")
def compile_counter() -> CompileCounter:
  return _COUNTER


# ------------------------------------------------------------------------- memory between modules

# Session-scoped models, whose compiled programs would otherwise pile up over the modules: each
# module compiles its own shapes and skip sets. Measured on the 2-core CI CPU: each SmolLM2
# program (AR, a fixed skip set's speculation round) added 170-310 MB of RSS, 0.78 GB for three;
# dropping the model's CompileCache alone freed nothing (JAX's caches hold the executables too),
# then jax.clear_caches() freed 0.36 GB and malloc_trim 0.73 GB more (freed memory, the load's
# included, that glibc had kept). Without this a full session peaked at 14.2 GB; with it 4.4 GB.
_SHARED_MODELS: list[api.Model] = []


def _return_freed_memory_to_the_os():
  try:  # glibc keeps freed blocks in its arenas; without this, RSS stays at its high-water mark
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass


@pytest.fixture(autouse=True)
def return_freed_memory():
  """After each test: what it freed goes back to the OS, not into the next test's peak."""
  yield
  _return_freed_memory_to_the_os()


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
  """After each module: drop the shared models' compiled programs and JAX's in-memory caches
  (jit caches, eager ops). A later module that needs a program compiles it again, or reads it
  from the session's on-disk XLA cache (compile_cache.persistent_cache_dir)."""
  yield
  for model in _SHARED_MODELS:
    model.compiled = CompileCache()
  jax.clear_caches()
  gc.collect()
  _return_freed_memory_to_the_os()


# ---------------------------------------------------------------------------------- SmolLM2

# The committed latency profile of SmolLM2 (float32) on the CI CPU (BENCHMARKS.md: 2 vCPU AMD
# EPYC). On any other CPU there is no stored profile for this device, so the first speculative
# generation with a freshly loaded SmolLM2 measured one (load_or_measure: a full one, 204 s inside
# tests/test_readme.py's API example on a 2-vCPU Intel Xeon, until session 29; a quick one since)
# and each notebook a quick one (its own cell, not saved): the suite took 3-4 minutes longer on
# some CI machines than on others. The README's main command (tests/test_front_door.py) runs in
# a fresh clone of its own without this fixture's profile: a user's first use.
CI_CPU = "cpu: AMD EPYC x2"
SMOL_PROFILE_NAME = packaged_models.MODELS[checkpoint.DEFAULT_MODEL].file_name


@pytest.fixture(autouse=True, scope="session")
def ci_cpu_profile_for_this_cpu():
  """Stores the CI CPU's SmolLM2 profile in the session cache under this CPU's name, where none
  is stored for it, so every CPU runs the suite as the CI CPU does (README's API example, the
  notebooks, the scripts: all read it as this device's stored profile; their outputs are
  checked against AR, whichever profile decides). Measuring and saving a missing profile has
  its own test (tests/test_latency_profile.py, a tiny model)."""
  from knapspec_jax import latency
  if (jax.default_backend() == "cpu"
      and latency.stored(SMOL_PROFILE_NAME, "float32") is None):
    source = latency.LatencyProfile.path_for(CI_CPU, SMOL_PROFILE_NAME, "float32")
    assert source.is_file(), f"{source} is missing: the CI CPU's committed profile"
    target = latency.LatencyProfile.path_for(latency.device_name(), SMOL_PROFILE_NAME, "float32",
                                             latency.user_dir())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    assert latency.stored(SMOL_PROFILE_NAME, "float32") is not None
  yield


@pytest.fixture(scope="session")
def smol_path() -> pathlib.Path:
  """The bundled SmolLM2 GGUF, even when $KNAPSPEC_MODEL points the library elsewhere."""
  override = os.environ.pop("KNAPSPEC_MODEL", None)
  try:
    path = checkpoint.default_model_path()
  finally:
    if override is not None:
      os.environ["KNAPSPEC_MODEL"] = override
  assert path.name == packaged_models.MODELS[checkpoint.DEFAULT_MODEL].file_name
  return path


@pytest.fixture(scope="session")
def smol_jax(smol_path) -> api.Model:
  # use_cache=False: exercise the GGUF dequantization path itself, not an Orbax copy of it.
  model = api.load_model(str(smol_path), use_cache=False)
  _SHARED_MODELS.append(model)
  return model


@pytest.fixture(scope="session")
def smol_hf(smol_path):
  from transformers import AutoModelForCausalLM
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = AutoModelForCausalLM.from_pretrained(smol_path.parent, gguf_file=smol_path.name,
                                                 dtype=torch.float32)
  return model.eval()


# ------------------------------------------------------------------------------ Spec-Bench

PROMPT_CATEGORIES = ("writing", "math", "translation")


@pytest.fixture(scope="session")
def spec_bench_prompts() -> dict[str, str]:
  """First user turn of the first item of three different categories."""
  path = DATA_DIR / "spec_bench_question.jsonl"
  assert path.is_file(), f"{path} is missing: the tests read Spec-Bench prompts from it"
  prompts = {}
  for line in path.read_text().splitlines():
    item = json.loads(line)
    if item["category"] in PROMPT_CATEGORIES and item["category"] not in prompts:
      prompts[item["category"]] = item["turns"][0]
  assert sorted(prompts) == sorted(PROMPT_CATEGORIES)
  return prompts


# ------------------------------------------------------------------------- tiny random models

@dataclasses.dataclass
class TinyModel:
  name: str
  path: pathlib.Path  # HF checkpoint directory (config.json + model.safetensors)
  hf: torch.nn.Module  # the transformers reference, float32, eval mode
  jax: api.Model  # the same weights loaded by knapspec_jax (default: fused projections)
  jax_unfused: api.Model  # loaded with fuse=False: the separate q/k/v and gate/up layout


_TINY_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512)


def _tiny_hf_config(name: str):
  import transformers
  if name == "llama":
    return transformers.LlamaConfig(num_hidden_layers=2, tie_word_embeddings=True,
                                    rope_theta=10000.0, **_TINY_COMMON)
  if name == "llama3_rope":
    # original context 64 against head_dim 16 puts RoPE frequencies in all three llama3 bands
    # (kept, smoothed, divided by factor) so the scaling formula is exercised.
    return transformers.LlamaConfig(
        num_hidden_layers=3, tie_word_embeddings=False, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        **_TINY_COMMON)
  if name == "qwen2":
    return transformers.Qwen2Config(num_hidden_layers=3, tie_word_embeddings=False,
                                    rope_theta=1000000.0, use_sliding_window=False,
                                    **_TINY_COMMON)
  if name == "qwen3":
    return transformers.Qwen3Config(num_hidden_layers=4, head_dim=16, tie_word_embeddings=True,
                                    rope_theta=1000000.0, use_sliding_window=False,
                                    **_TINY_COMMON)
  raise KeyError(name)


TINY_NAMES = ("llama", "llama3_rope", "qwen2", "qwen3")


def run_gpu_script_smoke(script: str, output, *flags: str) -> subprocess.CompletedProcess:
  """experiments/gpu/<script> --smoke [flags] on the CPU, its records written to `output`; fails
  the test with the script's stderr when it does not exit 0."""
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "gpu" / script), "--smoke",
       f"--output={output}", *flags], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def build_tiny_hf(name: str, seed: int = 0) -> torch.nn.Module:
  """A transformers model whose every weight is random and O(1) in effect: norm scales away from
  1 and nonzero biases, so a loader that drops or mislabels any tensor changes the logits."""
  return build_random_hf(_tiny_hf_config(name), seed)


def build_random_hf(cfg, seed: int = 0) -> torch.nn.Module:
  """build_tiny_hf's recipe for any transformers config (tests/test_sharding.py's head counts)."""
  import transformers
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if "norm" in pname:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif pname.endswith("bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
      elif "embed_tokens" in pname:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      else:  # large enough that greedy decoding wanders instead of repeating one token
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
  return model.eval()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, TinyModel]:
  models = {}
  for name in TINY_NAMES:
    hf = build_tiny_hf(name)
    path = tmp_path_factory.mktemp(f"tiny_{name}")
    hf.save_pretrained(path, safe_serialization=True)
    assert (path / "model.safetensors").is_file()
    models[name] = TinyModel(name, path, hf, api.load_model(str(path), use_cache=False),
                             api.load_model(str(path), use_cache=False, fuse=False))
    _SHARED_MODELS.extend((models[name].jax, models[name].jax_unfused))
  return models


@pytest.fixture(params=TINY_NAMES)
def tiny(request, tiny_models) -> TinyModel:
  return tiny_models[request.param]


def _hf_greedy(hf_model, ids, max_new_tokens: int) -> list[int]:
  """transformers' own greedy generate with end-of-sequence disabled: exactly max_new_tokens."""
  input_ids = torch.as_tensor(np.asarray(ids, np.int64))[None]
  with torch.no_grad():
    out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                            do_sample=False, max_new_tokens=max_new_tokens,
                            eos_token_id=None, pad_token_id=0)
  new = out[0, input_ids.shape[1]:].tolist()
  assert len(new) == max_new_tokens
  return new


def _hf_logits(hf_model, ids) -> np.ndarray:
  """float32 logits [T, V] of transformers for one sequence, no cache."""
  input_ids = torch.as_tensor(np.asarray(ids, np.int64))[None]
  with torch.no_grad():
    return hf_model(input_ids, use_cache=False).logits[0].float().numpy()


@pytest.fixture(scope="session")
def hf_greedy():
  return _hf_greedy


@pytest.fixture(scope="session")
def hf_logits():
  return _hf_logits


@pytest.fixture(scope="session")
def tiny_builder():
  """build_tiny_hf(name, seed) for tests that need a fresh model of their own."""
  return build_tiny_hf
