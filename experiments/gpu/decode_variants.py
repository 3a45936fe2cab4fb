"""Where does an H100 decode step's time go, and which layout of the step is fastest?

  python experiments/gpu/decode_variants.py --attn_lens=256,4096,8192 --variants=xla,cudnn,unroll2

Times the on-device AR loop (ms/token, median of --repeats loops of --steps tokens) for:
  xla      the project's forward as is (XLA-generated attention);
  cudnn    ModelConfig.attention="cudnn": decode attention (one query) in one cuDNN kernel
           (jax.nn.dot_product_attention) instead of einsum + mask + softmax + einsum;
  pallas   ModelConfig.attention="pallas": the split-KV Pallas kernel (decode_attention.py);
  unroll2  two decode steps per while-loop iteration (halves the loop's per-iteration
           predicate copy to the host);
  V+f32acc, V+pad2  variant V with every projection computed with float32 accumulation, or as
           a two-row GEMM (XLA turns a one-row product into a broadcast multiply + reduce);
and counts the kernels (fusions, library calls) in one iteration of the compiled loop body.
XLA flags come from the environment (run the script once per XLA_FLAGS setting).
"""

import dataclasses
import os
import pathlib
import re
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import compile_cache, decoding, latency, metrics  # noqa: E402
from knapspec_jax import model as model_lib  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.config import ModelConfig  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_LENS = flags.DEFINE_list("attn_lens", ["256", "4096", "8192"], "Attention buckets.")
_VARIANTS = flags.DEFINE_list("variants", ["xla", "cudnn", "unroll2"], "Variants to time.")
_STEPS = flags.DEFINE_integer("steps", 128, "Tokens per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed loops (median).")
_TAG = flags.DEFINE_string("tag", "", "Label printed with each line (e.g. the XLA_FLAGS).")
_DUMP = flags.DEFINE_integer("dump_body", 0, "Print the first N kernels of the loop body with "
                             "the source op each fuses (which ops a layer launches).")

_linear = model_lib.linear


def _linear_f32acc(x, w):
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _linear_pad2(x, w):
  """A one-row product padded to two rows: a GEMM rather than a vector-matrix product (which
  XLA strength-reduces to a broadcast multiply and a reduction)."""
  if x.ndim != 3 or x.shape[1] != 1:
    return x @ w
  return (jnp.concatenate([x, jnp.zeros_like(x)], axis=1) @ w)[:, :1]


LINEARS = {"f32acc": _linear_f32acc, "pad2": _linear_pad2}


def _unrolled_segment(params, state, *, cfg, attn_len, per_iter=2):
  """Like decoding.ar_segment, but per_iter steps per loop iteration; steps after `done` (or
  past the bucket) are computed and discarded (the cursor does not move for them)."""
  skip = SkipMask.none(cfg.n_layers)
  limit = min(attn_len, cfg.max_seq_len) - per_iter + 1

  def step(s):
    out = model_lib.forward(params, cfg, s.token[None, None], s.cache, skip=skip,
                            attn_len=attn_len)
    nxt = jnp.argmax(model_lib.lm_head(params, cfg, out.hidden[0, -1])).astype(jnp.int32)
    live = ~s.done
    n_out = s.n_out + live.astype(jnp.int32)
    done = s.done | jnp.any(nxt == s.eos) | (n_out >= s.max_new)
    cache = out.cache.rollback(jnp.where(live, out.cache.length, s.cache.length))
    return s.replace(cache=cache, token=jnp.where(live, nxt, s.token),
                     out=s.out.at[s.n_out].set(jnp.where(live, nxt, s.out[s.n_out])),
                     n_out=n_out, done=done)

  def body(s):
    for _ in range(per_iter):
      s = step(s)
    return s

  return jax.lax.while_loop(lambda s: ~s.done & (s.cache.length < limit), body, state)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class UnrolledSegmentStatics:
  """_unrolled_segment's static settings."""

  cfg: ModelConfig
  attn_len: int
  per_iter: int = 2
  donate_argnums = (1,)  # the decode state

  def run(self, params, state):
    return _unrolled_segment(params, state, cfg=self.cfg, attn_len=self.attn_len,
                             per_iter=self.per_iter)


def body_kernels(hlo_text: str) -> list[str]:
  """One line per kernel-launching instruction of the while body: its kind and source ops."""
  body = re.search(r"body=(%?[\w.\-]+)", hlo_text)
  name = body.group(1).lstrip("%") if body else ""
  m = re.search(r"^(?:%?)" + re.escape(name) + r" .*?\{\n(.*?)^\}", hlo_text, re.S | re.M)
  lines = []
  for line in (m.group(1).splitlines() if m else []):
    op = re.search(r"= (\S+) (fusion|custom-call)\(", line)
    if op:
      kind = re.search(r"kind=(\w+)", line)
      src = re.search(r'op_name="([^"]+)"', line)
      calls = re.search(r"calls=(%?[\w.\-]+)", line)
      lines.append(f"{op.group(1)[:40]:40s} {kind.group(1) if kind else op.group(2):10s} "
                   f"{calls.group(1) if calls else '':28s} {src.group(1)[-90:] if src else ''}")
  return lines


def main(argv):
  del argv
  m = ks.load_model(dtype="bfloat16", attention="xla")
  dtype = jnp.bfloat16
  print(latency.device_name(), "| XLA_FLAGS:", os.environ.get("XLA_FLAGS", "") or "(none)",
        flush=True)
  for n in map(int, _LENS.value):
    base = latency.random_cache(m.cfg, dtype, n - 2 * _STEPS.value - 4, jax.random.PRNGKey(0))
    for variant in _VARIANTS.value:
      base_variant, _, linear = variant.partition("+")
      model_lib.linear = LINEARS.get(linear, _linear)
      cfg = dataclasses.replace(
          m.cfg, attention=base_variant if base_variant in ("cudnn", "pallas") else "xla")
      if variant.startswith("unroll"):
        statics = UnrolledSegmentStatics(cfg, n, int(variant.removeprefix("unroll")))
      else:
        statics = decoding.ARSegmentStatics(cfg, n)

      def make_args():
        cache = jax.tree.map(jnp.copy, base)
        state = decoding.init_state(cache, jnp.zeros((cfg.vocab_size,), jnp.float32),
                                    _STEPS.value + 1, ())
        return m.params, state
      try:
        compiled = CompileCache()
        fn = compiled.get(statics, make_args())
        t = latency.median_seconds(fn, make_args, _REPEATS.value) / _STEPS.value
        text = fn.as_text()
        kernels = metrics.loop_kernels(text)
        if _DUMP.value:
          print("\n".join(body_kernels(text)[:_DUMP.value]))
        total = sum(kernels.values())
        print(f"{_TAG.value:12s} attn_len {n:5d} {variant:8s} {t * 1e3:7.3f} ms/token "
              f"{1 / t:7.1f} tok/s  kernels/iter {total} {kernels}  "
              f"(compile {compiled.stats.compile_s:.1f} s)", flush=True)
      except Exception as e:  # noqa: BLE001  (report and go on to the next variant)
        print(f"{_TAG.value:12s} attn_len {n:5d} {variant:8s} FAILED: "
              f"{type(e).__name__}: {str(e)[:300]}", flush=True)
  model_lib.linear = _linear


if __name__ == "__main__":
  app.run(main)
