"""Where a speculation round's time goes (issue 13): the segment program against its parts.

  python experiments/gpu/round_terms.py            # H200: Qwen2.5-1.5B shape, random bf16 weights
  python experiments/gpu/round_terms.py --smoke    # CPU: tiny shapes, checks the script runs
  python experiments/gpu/round_terms.py --gguf=$QWEN_GGUF --context=16000 --gammas=4 \
      --masks=BITS                                # H200: a kept draft on the real weights

On Qwen2.5-Coder-1.5B a round measured 0.8-2.3 ms more than the latency profile's draft steps
plus verify (BENCHMARKS.md 10.6). For a skip set S and draft lengths gamma, at one context, this
times on device:
  segment   spec_segment over `rounds` rounds at each --thresholds confidence threshold (0: every
            round drafts exactly gamma tokens, no confidence exit, no EOS; 0.7, KnapSpec's:
            drafts end at the first token under it, as the real runs' do) -> ms per round and
            the draft forwards per round it ran (its counters); with --segment_graphs=0,1 also
            compiled with CUDA graphs over its loops (ModelConfig.segment_graphs), in the same
            process, its parts (below) compiled as ever;
  draft     the AR segment with S skipped (what the profile calls a draft step) -> ms per step;
  verify    verify_loop of gamma + 1 tokens (the profile's verify) -> ms per forward;
and prints the excess: segment - (forwards per round * draft + verify), with the kernels per loop body of
each program (metrics.loop_kernels) and the step's bytes and share of the read bandwidth.
Run it once per XLA flag set to see whether the excess is a lowering matter (run_round_terms.sh).
Records: $OUT/round_terms.json (or --output).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from shapes import loaded_model, random_model, spread, write_records  # noqa: E402
from knapspec_jax import decoding, latency, metrics, speculative  # noqa: E402
from knapspec_jax.compile_cache import CompileCache  # noqa: E402
from knapspec_jax.decoding import attn_bucket  # noqa: E402
from knapspec_jax.skip_mask import SkipMask  # noqa: E402

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes and loops (CPU check of the script).")
_MODEL = flags.DEFINE_string("model", "qwen2.5-1.5b", "Model shape (shapes.SHAPES).")
_CONTEXT = flags.DEFINE_integer("context", 2000, "Cache cursor at the start.")
_GAMMAS = flags.DEFINE_list("gammas", ["1", "2", "4"], "Draft lengths.")
_SETS = flags.DEFINE_list("sets", ["8:4", "16:12"], "Skip sets as attn:mlp counts of skipped "
                          "inner sublayers (the first attn / mlp inner layers, spread evenly).")
_MASKS = flags.DEFINE_list("masks", [], "Skip sets as SkipMask bit strings (a window record's "
                           "decision.skip joined: attention, MLP of layer 0, then layer 1, ...), "
                           "timed instead of --sets.")
_GGUF = flags.DEFINE_string("gguf", None, "A real checkpoint instead of --model's random "
                            "weights (shapes.loaded_model; bfloat16, or float32 with --smoke).")
_THRESHOLDS = flags.DEFINE_list("thresholds", ["0"], "Confidence thresholds of the timed "
                                 "segments (0: no exit; KnapSpec's is 0.7).")
_DRAFT_VOCAB = flags.DEFINE_integer("draft_vocab", 0, "With --gguf: drafts score this many "
                                    "tokens (load_model's draft_vocab; 0: all).")
_SEGMENT_GRAPHS = flags.DEFINE_list("segment_graphs", ["0"], "Segment programs compiled without "
                                     "(0) and with (1) CUDA graphs over their loops "
                                     "(ModelConfig.segment_graphs), each timed.")
_ROUNDS = flags.DEFINE_integer("rounds", 64, "Rounds (and steps) per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed loops (median).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: $OUT/round_terms.json).")


def skip_sets(n_layers: int, smoke: bool) -> list[SkipMask]:
  """--masks as given, else --sets spread evenly (smoke: one attention and one MLP)."""
  if _MASKS.value:
    masks = [SkipMask.from_list([int(c) for c in bits]) for bits in _MASKS.value]
    for mask in masks:
      if len(mask.skip) != 2 * n_layers:
        raise app.UsageError(f"--masks: {len(mask.skip)} bits, the model has {2 * n_layers} "
                             f"sublayers")
    return masks
  sets = [(1, 1)] if smoke else [tuple(int(x) for x in spec.split(":")) for spec in _SETS.value]
  return [SkipMask.from_layers(n_layers, attn=spread(n_layers, a), mlp=spread(n_layers, m))
          for a, m in sets]


def main(argv):
  del argv
  smoke = _SMOKE.value
  rounds, repeats = (4, 2) if smoke else (_ROUNDS.value, _REPEATS.value)
  m = (loaded_model(_GGUF.value, _CONTEXT.value, "float32" if smoke else "bfloat16",
                    _DRAFT_VOCAB.value)
       if _GGUF.value else random_model(_MODEL.value, _CONTEXT.value, smoke))
  cfg, params, context, capacity = m.cfg, m.params, m.context, m.capacity
  read_gbps = latency.read_bandwidth(64 << 20 if smoke else None)
  device = latency.device_name()
  flags_env = os.environ.get("XLA_FLAGS", "")
  print(f"{device} | jax {jax.__version__} | {m.name} | context {context} | XLA_FLAGS="
        f"'{flags_env}' | {rounds} rounds x {repeats} loops", flush=True)
  compiled = CompileCache()
  records = []
  for skip in skip_sets(cfg.n_layers, smoke):
    for gamma in map(int, _GAMMAS.value):
      attn_len = attn_bucket(context + rounds * (gamma + 1) + gamma + 1, capacity)
      ar_args = lambda: (params, m.fresh_state(rounds))
      draft = compiled.get(decoding.draft_program(cfg, attn_len, skip), ar_args())
      tokens = jnp.ones((1, gamma + 1), jnp.int32)
      ver_args = lambda: (params, m.fresh_cache(), tokens,
                          jnp.asarray(rounds, jnp.int32))
      verify = compiled.get(latency.VerifyLoopStatics(cfg, attn_len), ver_args())
      t_draft = latency.median_seconds(draft, ar_args, repeats) / rounds
      t_verify = latency.median_seconds(verify, ver_args, repeats) / rounds
      for threshold, graphs in itertools.product(map(float, _THRESHOLDS.value),
                                                 [bool(int(g)) for g in _SEGMENT_GRAPHS.value]):
        seg_args = lambda: (params, m.fresh_state(rounds * (gamma + 1) + 1),
                            speculative.SpecCounters.zeros(), jnp.asarray(rounds, jnp.int32),
                            jnp.asarray(threshold, jnp.float32))
        seg_cfg = dataclasses.replace(cfg, segment_graphs=graphs)
        seg = compiled.get(speculative.SpecSegmentStatics(seg_cfg, skip, gamma, attn_len),
                           seg_args())
        _, counters = seg(*seg_args())
        ran = int(counters.rounds)
        per_round = int(counters.draft_forwards) / ran
        t_seg = latency.median_seconds(seg, seg_args, repeats) / ran
        parts = per_round * t_draft + t_verify
        kernels = {k: sum(metrics.loop_kernels(f.as_text()).values())
                   for k, f in (("segment", seg), ("draft", draft), ("verify", verify))}
        record = dict(model=m.name, device=device, xla_flags=flags_env, context=context,
                      draft_vocab=cfg.draft_vocab, segment_graphs=graphs, attn_len=attn_len,
                      n_attn_skipped=len(skip.attn_skipped), n_mlp_skipped=len(skip.mlp_skipped), gamma=gamma, threshold=threshold,
                      rounds=ran, draft_forwards_per_round=per_round,
                      ms_per_round=t_seg * 1e3, ms_per_draft_step=t_draft * 1e3,
                      ms_per_verify=t_verify * 1e3, ms_parts=parts * 1e3,
                      ms_excess=(t_seg - parts) * 1e3, kernels_per_body=kernels,
                      read_gbps=read_gbps)
        records.append(record)
        print(f"skip {len(skip.attn_skipped):2d} attn + {len(skip.mlp_skipped):2d} mlp  gamma "
              f"{gamma} threshold {threshold:g}{' graphs' if graphs else ''}: round "
              f"{t_seg * 1e3:7.3f} ms = {per_round:.2f} "
              f"x draft {t_draft * 1e3:6.3f} + verify {t_verify * 1e3:6.3f} ({parts * 1e3:7.3f}) "
              f"+ excess {(t_seg - parts) * 1e3:+7.3f} ms | kernels per body {kernels}",
              flush=True)
  out = write_records(records, _OUTPUT.value, "round_terms.json")
  print(f"wrote {out} ({len(records)} records)")


if __name__ == "__main__":
  app.run(main)
