"""The compile worker (compile_cache.CompileWorker): a separate process compiles a program into
the executable store from its statics and argument shapes, and the decoding process loads it
instead of compiling (background_compile="process", a skip-set switch without a compile).

Everything runs in a fresh Python process with the store on (the suite turns it off, conftest)
and a cache directory of its own, on a tiny random Llama whose sublayers are small beside its
embeddings (scale 0.1), so that skipping some keeps most tokens and KnapSpec drafts under a
profile where drafting pays. The references are independent of the worker: the same program
compiled in the decoding process itself, and plain AR decoding's tokens.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = """
import dataclasses, json, sys, time
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
traced = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, s, fun_name=None, **_: traced.append(fun_name)
    if event == "/jax/core/compile/jaxpr_trace_duration" else None)
import knapspec_jax as ks
from knapspec_jax import api, compile_cache, speculative, model as model_lib
from knapspec_jax.engine import abstract_state
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.latency import LatencyProfile

cfg = ModelConfig(arch="llama", vocab_size=256, d_model=64, d_ff=128, n_layers=4, n_heads=4,
                  n_kv_heads=2, head_dim=16, max_seq_len=1024)
params = model_lib.init_random_params(cfg, jax.random.PRNGKey(0), scale=0.1)
out = {}

# 1. One program through the worker, polled as the decode loop polls: loaded, not compiled here.
skip = ks.SkipMask.from_layers(4, attn=[1, 2])
statics = speculative.SpecSegmentStatics(cfg, skip, 3, 64)
model = api.Model(cfg, params, None, (), "float32", "tiny")
args = lambda: (params, abstract_state(model), speculative.SpecCounters.zeros(),
                jnp.int32(4), jnp.float32(0.0))
cache = CompileCache()
polls, fn = 0, None
while fn is None:
  fn = cache.get_async(statics, args(), "process")
  polls += 1
  time.sleep(0.05)
reference = jax.jit(statics.run)  # compiled here, without the cache or the store
def fresh_state():  # a new one per call: the program donates it
  state = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), args()[1])
  return state.replace(token=jnp.asarray(7, state.token.dtype), eos=jnp.full_like(state.eos, -1),
                       max_new=jnp.asarray(20, state.max_new.dtype))
call = lambda: (params, fresh_state(), speculative.SpecCounters.zeros(), jnp.int32(4),
                jnp.float32(0.0))
got, want = fn(*call()), reference(*call())
out["one"] = dict(polls=polls, compiles=cache.stats.compiles + cache.stats.background_compiles,
                  loaded=cache.stats.background_loaded,
                  equal=bool(all(np.array_equal(a, b) for a, b in
                                 zip(jax.tree.leaves(got), jax.tree.leaves(want)))))

# 2. A program the worker cannot receive (its statics class lives in this script, run as
# __main__): compiled in a thread instead, with the reason on stderr.
@compile_cache.program
@dataclasses.dataclass(frozen=True)
class Doubler:
  donate_argnums = ()
  def run(self, x):
    return 2 * x
cache2 = CompileCache()
fn = None
while fn is None:
  fn = cache2.get_async(Doubler(), (jnp.ones(3),), "process")
  time.sleep(0.05)
out["main_class"] = dict(value=np.asarray(fn(jnp.ones(3))).tolist(),
                         background_compiles=cache2.stats.background_compiles)

# 3. KnapSpec: a first generation asks the worker for its draft; once the worker has stored it,
# a second generation that searches again (the kept drafts forgotten) switches to the draft by
# loading it in the background (a few plain tokens meanwhile), with nothing compiled.
model.profile = LatencyProfile(device="synthetic", model="tiny", dtype="float32", n_layers=4,
                               c0=1e-4, a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)  # drafts pay
ar = api.generate(model, np.arange(1, 20), 200, method="ar", ignore_eos=True).output_ids
config = ks.KnapSpecConfig(background_compile="process", interval=4)
first = api.generate(model, np.arange(1, 20), 200, method="knapspec", ignore_eos=True,
                     config=config)
model.compiled.wait_background()
model.kept_drafts.clear()
model.search_gains.clear()
stats = model.compiled.stats
compiles, loaded, n_traced = (stats.compiles + stats.background_compiles,
                              stats.loaded + stats.background_loaded, len(traced))
second = api.generate(model, np.arange(1, 20), 200, method="knapspec", ignore_eos=True,
                      config=config)
windows = second.stats["window_log"]
drafting = [w for w in windows if w["decision"]["gamma"] > 0]
# A slow machine can end the 200 tokens before the load does; once it is loaded, a third
# generation (the second's draft kept) drafts with the program in memory.
model.compiled.wait_background()
third = api.generate(model, np.arange(1, 20), 200, method="knapspec", ignore_eos=True,
                     config=config)
out["knapspec"] = dict(
    first_equal=first.output_ids == ar, second_equal=second.output_ids == ar,
    third_equal=third.output_ids == ar,
    first_decided=[w["decision"]["gamma"] for w in first.stats["window_log"]],
    drafting=len(drafting),
    first_drafting_window={k: drafting[0][k] for k in ("rounds", "tokens",
                                                       "ar_tokens_while_compiling")}
    if drafting else None,
    third_rounds=sum(w["rounds"] for w in third.stats["window_log"]),
    new_compiles=stats.compiles + stats.background_compiles - compiles,
    new_loads=stats.loaded + stats.background_loaded - loaded,
    spec_traced=[n for n in traced[n_traced:] if n == "SpecSegmentStatics"])
print(json.dumps(out))
"""


def test_worker_compiles_into_the_store_and_the_decoding_process_switches_by_loading(tmp_path):
  env = {**os.environ, "KNAPSPEC_CACHE": str(tmp_path / "cache"), "KNAPSPEC_XLA_CACHE": "1",
         "KNAPSPEC_EXEC_CACHE": "1", "JAX_PLATFORMS": "cpu"}
  script = tmp_path / "worker_script.py"
  script.write_text(_SCRIPT)
  proc = subprocess.run([sys.executable, str(script), str(REPO)], env=env, text=True,
                        capture_output=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one = out["one"]
  assert one["polls"] > 1, "ready at once: nothing was compiled in the background"
  assert one["compiles"] == 0 and one["loaded"] == 1, one
  assert one["equal"], "the worker's program computes other values than the same program " \
                       "compiled here"
  main_class = out["main_class"]
  assert main_class["value"] == [2.0, 2.0, 2.0] and main_class["background_compiles"] == 1
  assert "compile worker did not store Doubler" in proc.stderr
  spec = out["knapspec"]
  assert spec["first_equal"] and spec["second_equal"] and spec["third_equal"], \
      "KnapSpec's output differs from AR's"
  assert any(spec["first_decided"]), "the first generation chose no draft"
  assert spec["drafting"] > 0, "the second generation never chose a draft"
  # the window that chose the draft decoded plainly (chunks of 4 tokens) until the program was
  # loaded, then drafted in it; a slow machine may end the generation first (CI did once, at 200
  # tokens), but no token of that window came from anything else
  window = spec["first_drafting_window"]
  assert window["rounds"] > 0 or window["ar_tokens_while_compiling"] == window["tokens"], spec
  assert spec["third_rounds"] > 0, "the loaded draft never ran"
  assert spec["new_compiles"] == 0 and spec["spec_traced"] == [], spec
  assert spec["new_loads"] >= 1, spec


def test_the_worker_reads_the_autotuning_results_jax_keeps_beside_the_cache(tmp_path):
  """The worker compiles with JAX's cache off, where JAX points no compile at its XLA caches;
  compile_cache.shared_xla_caches gives the worker the per-fusion autotuning folder that JAX
  itself sets for a compile of the decoding process (its own compile options, the reference),
  and nothing when the persistent cache is off."""
  script = """
import json, sys
sys.path.insert(0, sys.argv[1])
from knapspec_jax import compile_cache
ours = compile_cache.shared_xla_caches()
from jax._src import compiler
jax_own = compiler.get_compile_options(num_replicas=1, num_partitions=1)
print(json.dumps([ours, jax_own.executable_build_options.debug_options
                  .xla_gpu_per_fusion_autotune_cache_dir]))
"""
  for setting in ("1", "0"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", KNAPSPEC_CACHE=str(tmp_path / setting),
               KNAPSPEC_XLA_CACHE=setting)
    proc = subprocess.run([sys.executable, "-c", script, str(REPO)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, jax_own = json.loads(proc.stdout.strip().splitlines()[-1])
    if setting == "1":
      assert jax_own.startswith(str(tmp_path / setting))
      assert ours == {"xla_gpu_per_fusion_autotune_cache_dir": jax_own}
    else:
      assert ours == {} and jax_own == ""
