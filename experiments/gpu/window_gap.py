"""Why does KnapSpec, deciding to decode plainly, run 0.82x of AR on the 2K-token document (and
only there)? Times the pieces on one prompt, interleaved:

  python experiments/gpu/window_gap.py --n_tokens=2000 --max_new_tokens=1024

  generate ar / knapspec   the API calls of the benchmark
  run_ar                   decoding.run_ar on a fresh prefill, without and with max_tokens
"""

import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import api, datasets, decoding  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402

_N = flags.DEFINE_integer("n_tokens", 2000, "Prompt length (long-document prompt).")
_NEW = flags.DEFINE_integer("max_new_tokens", 1024, "New tokens.")


def main(argv):
  del argv
  m = ks.load_model(dtype="bfloat16")
  ids = datasets.encode(m.tokenizer, datasets.long_document_prompt(m.tokenizer, _N.value))
  for method in ("ar", "knapspec"):  # warm-up, as the benchmark does
    ks.generate(m, ids, _NEW.value, method=method, ignore_eos=True)

  def direct(max_tokens):
    cache = KVCache.create(m.cfg, api.DTYPES[m.dtype])
    logits, cache = decoding.prefill(m.params, m.cfg, ids, cache, m.compiled)
    state = decoding.init_state(cache, logits, _NEW.value, ())
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = decoding.run_ar(m.params, m.cfg, state, m.compiled, max_tokens=max_tokens)
    jax.block_until_ready(state)
    return int(state.n_out) / (time.perf_counter() - start)

  for rep in range(3):
    row = []
    for method in ("ar", "knapspec"):
      r = ks.generate(m, ids, _NEW.value, method=method, ignore_eos=True)
      row.append(f"generate {method} {r.tokens_per_s:6.1f}")
    row.append(f"run_ar {direct(None):6.1f}")
    row.append(f"run_ar(max_tokens) {direct(_NEW.value - 1):6.1f}")
    print(f"rep {rep}: " + " | ".join(row), flush=True)


if __name__ == "__main__":
  app.run(main)
