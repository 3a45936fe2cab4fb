"""Run statistics: what a generation did, window by window, and how well the latency profile
predicted it (acceptance, tokens per verify step, time split, decisions, prediction error), and
how close a decode runs to the device's read bandwidth (step_bytes, bandwidth), and a method's
speedup over AR from paired runs (paired_speedup)."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import decoding, sharding
from knapspec_jax import model as model_lib
from knapspec_jax.config import ModelConfig
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.selection import Decision


def predicted_window_s(profile: LatencyProfile, decision: Decision, attn_len: int,
                       tokens: int, rounds: int, draft_forwards: int,
                       waited_tokens: int = 0) -> float:
  """The profile's seconds for a window as it ran: its draft forwards (each one's token goes to
  the verifier, the low-confidence last one of a round included, so this is the drafted count)
  and one verify of gamma + 1 positions per round, and one full step for each of the
  waited_tokens (of `tokens`) decoded plainly while the draft's program compiled; a plain
  window, one full step per token. A generation at a width prices them with the profile at that
  width (LatencyProfile.at_width: each verify and full step a forward of the width)."""
  plain = profile.t_step(None, attn_len)
  if not decision.drafts:
    return tokens * plain
  return (draft_forwards * profile.t_step(decision.skip, attn_len)
          + rounds * profile.t_verify(decision.gamma + 1, attn_len)
          + waited_tokens * plain)


def predicted_wall_s(window: dict) -> float:
  """The profile's wall seconds for a window record: its rounds (predicted_s) and the cost of the
  call that ran them (LatencyProfile.call_s; records written before session 24 have none)."""
  return window.get("predicted_wall_s", window["predicted_s"])


def window_attn_len(window: dict, capacity: int) -> int:
  """The attention bucket a drafting window record was priced at (controller.run: its context
  plus the round's gamma + 1 positions, the natural verify width and, with two-row steps, the
  last draft step's reach alike). The experiments' readers of old records recompute it here."""
  return decoding.attn_bucket(window["context"] + window["decision"]["gamma"] + 1, capacity)


def summarize(windows: list[dict], counters, search_s: float) -> dict:
  c = jax.device_get(counters)
  rounds, drafted, accepted = int(c.rounds), int(c.drafted), int(c.accepted)
  spec = [w for w in windows if w["decision"]["skip"] is not None]
  rel = [abs(predicted_wall_s(w) - w["measured_s"]) / w["measured_s"]
         for w in windows if w["measured_s"] > 0 and w["tokens"] > 0]
  return dict(
      speculation_steps=rounds, drafted_tokens=drafted, accepted_tokens=accepted,
      acceptance_rate=accepted / drafted if drafted else None,
      mean_accepted_per_step=(accepted + rounds) / rounds if rounds else None,
      search_s=search_s,
      draft_verify_s=sum(w["measured_s"] for w in spec),
      ar_s=sum(w["measured_s"] for w in windows if w["decision"]["skip"] is None),
      compile_in_windows_s=sum(w["compile_s"] for w in windows),
      drafting_windows=len(spec), windows=len(windows),
      profile_median_rel_err=float(np.median(rel)) if rel else None,
      decisions=[dict(context=w["context"], **{k: w["decision"][k] for k in (
          "n_attn_skipped", "n_mlp_skipped", "gamma", "alpha", "predicted_tpt", "ar_tpt",
          "best_tpt", "reason")}, measured_tokens_per_s=w["measured_tokens_per_s"],
                     **{k: w["decision"][k] for k in ("search_best",) if k in w["decision"]})
                 for w in windows],
      window_log=windows)


def departs_at(output_ids, reference_ids) -> int | None:
  """Index of the first output token that differs from the reference's (AR's), or where the
  shorter of the two ends; None when they are identical. In bfloat16 a speculative method's text
  can leave AR's (a verify window rounds differently from a step) and its speed is then measured
  on another text: token 3 of 1024 at 28K on the H200 (BENCHMARKS.md 10.30)."""
  a, b = np.asarray(output_ids), np.asarray(reference_ids)
  n = min(a.size, b.size)
  differ = np.flatnonzero(a[:n] != b[:n])
  if differ.size:
    return int(differ[0])
  return None if a.size == b.size else n


def distinct_share(output_ids, n: int = 8, tail: int = 512) -> float:
  """Distinct n-grams over all n-grams among the last `tail` tokens of an output (1.0 where they
  hold fewer than n + 1 tokens: nothing can repeat). AR's cost per token does not depend on the
  text, a draft's does: a text that ends in a loop (0.0) drafts almost for free. In bfloat16
  Qwen2.5-Coder-1.5B's answer to the 2K document has a continuation that loops (0.00) and one
  that repeats at a longer period (0.37-0.40); KnapSpec's 1.562x there on an H100 was on the
  first, AR's text the second (BENCHMARKS.md 10.47)."""
  if n < 1 or tail < 1:
    raise ValueError(f"n and tail must be positive, got n={n}, tail={tail}")
  last = np.asarray(output_ids).reshape(-1)[-tail:]
  if last.size <= n:
    return 1.0
  grams = {tuple(last[i:i + n].tolist()) for i in range(last.size - n + 1)}
  return len(grams) / (last.size - n + 1)


@dataclasses.dataclass(frozen=True)
class PairedSpeedup:
  """A method against AR over timed runs taken in pairs (run i of each, seconds apart, so that a
  machine's drift moves both alike): the median of the pairs' decode-speed ratios, their range,
  the same median end to end, and AR's own spread (its slowest and fastest run over its median),
  the noise a speedup has to clear. One pair on a busy 2-vCPU CPU read 1.26x for a KnapSpec run
  that decoded as AR does (session 34's CI run of the README's main command)."""

  decode: float
  decode_low: float
  decode_high: float
  e2e: float
  pairs: int
  ar_low: float
  ar_high: float

  def describe(self) -> str:
    head = f"{self.decode:.2f}x decode, {self.e2e:.2f}x end-to-end"
    if self.pairs == 1:
      return f"{head} (one pair)"
    return (f"{head} (medians of {self.pairs} paired runs; decode {self.decode_low:.2f}-"
            f"{self.decode_high:.2f}x; AR's own runs {self.ar_low:.2f}-{self.ar_high:.2f}x "
            "their median)")


def paired_speedup(runs, ar_runs) -> PairedSpeedup:
  """runs and ar_runs: GenerationResults (anything with tokens_per_s and e2e_tokens_per_s), run i
  of each timed as a pair."""
  if not runs or len(runs) != len(ar_runs):
    raise ValueError(f"paired_speedup needs as many runs as AR runs, at least one; got "
                     f"{len(runs)} and {len(ar_runs)}")
  ratios = [r.tokens_per_s / a.tokens_per_s for r, a in zip(runs, ar_runs)]
  e2e = [r.e2e_tokens_per_s / a.e2e_tokens_per_s for r, a in zip(runs, ar_runs)]
  ar_speeds = [a.tokens_per_s for a in ar_runs]
  ar_median = float(np.median(ar_speeds))
  return PairedSpeedup(decode=float(np.median(ratios)), decode_low=min(ratios),
                       decode_high=max(ratios), e2e=float(np.median(e2e)), pairs=len(ratios),
                       ar_low=min(ar_speeds) / ar_median, ar_high=max(ar_speeds) / ar_median)


def step_bytes(params, cfg: ModelConfig, context: int, kv_dtype, per_device: bool = False) -> int:
  """Bytes one full-model decode step reads at `context` cached positions: every weight once
  (the embedding table is read whole only as a tied LM head; untied, a step reads one row) and
  the keys and values of every layer up to the context.

  per_device: what one device of a tensor-parallel model reads (each param's shard, the cache's
  KV heads split over the mesh where the sharding rules split them); on one device the same."""
  size = lambda tree: model_lib.param_bytes(tree, per_device)
  weights = size(params)
  if not cfg.tie_embeddings:
    weights -= size(params["embed"])
  kv_heads = cfg.n_kv_heads
  mesh = sharding.mesh_of(params) if per_device else None
  if mesh is not None and sharding.ShardingRules.for_model(cfg, sharding.tp_size(mesh)).kv_heads:
    kv_heads //= sharding.tp_size(mesh)
  kv = 2 * cfg.n_layers * context * kv_heads * cfg.head_dim * jnp.dtype(kv_dtype).itemsize
  return weights + kv


def bandwidth(bytes_per_step: int, seconds_per_token: float, read_gbps: float | None) -> dict:
  """How close a decode runs to the memory-bound floor: the bytes a full step reads, those bytes
  per second of the measured time per token (GB/s, 1e9 bytes) and that over the device's
  measured read bandwidth. For a speculative method the time per token is per output token, so
  the fraction is AR-equivalent and may exceed 1 when drafting pays."""
  gbps = bytes_per_step / seconds_per_token / 1e9
  return dict(step_gb=bytes_per_step / 1e9, gb_per_s=gbps, read_gbps=read_gbps,
              bandwidth_fraction=gbps / read_gbps if read_gbps else None)


def format_bandwidth(b: dict) -> str:
  """'3.12 GB/step 1450 GB/s 36% of 4012' (the last part only when the bandwidth is known)."""
  out = f"{b['step_gb']:.3g} GB/step {b['gb_per_s']:6.1f} GB/s"
  if b["bandwidth_fraction"] is not None:
    out += f" {100 * b['bandwidth_fraction']:3.0f}% of {b['read_gbps']:.0f}"
  return out


_KERNEL_OP = re.compile(r"= \S+ (fusion|custom-call|copy|dynamic-update-slice|gather|reduce|"
                        r"dot|convolution|sort)\(")
# A collective's result: "= TYPE op(" or, run asynchronously, "= TYPE op-done(" (its -start's
# result holds the operands too, so only the -done is counted).
_COLLECTIVE_OP = re.compile(r"= (.+?) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                            r"collective-permute)(-done)?\(")
_ARRAY_TYPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")


def _kernel_counts(lines) -> dict:
  counts = {}
  for line in lines:
    op = _KERNEL_OP.search(line)
    if op:
      kind = op.group(1)
      if kind == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', line)
        kind = f"custom-call:{target.group(1) if target else '?'}"
      elif kind == "fusion":  # by fusion kind; a library or Triton GEMM fusion by its name
        fusion_kind = re.search(r"kind=(k\w+)", line)
        kind = f"fusion:{fusion_kind.group(1) if fusion_kind else '?'}"
        backend = re.search(r'"kind":"(__\w+)"', line)
        if backend:
          kind += f":{backend.group(1)}"
      counts[kind] = counts.get(kind, 0) + 1
  return counts


def loop_body(hlo_text: str) -> list[str]:
  """The instructions of the while body with the most kernel-launching ones (loop_kernels): in a
  decode program, the loop over steps."""
  best, most = [], -1
  for body in re.findall(r"body=%?([\w.\-]+)", hlo_text):
    m = re.search(r"^%?" + re.escape(body) + r" .*?\{\n(.*?)^\}", hlo_text, re.S | re.M)
    lines = m.group(1).splitlines() if m else []
    n = sum(_kernel_counts(lines).values())
    if n > most:
      best, most = lines, n
  return best


def loop_kernels(hlo_text: str) -> dict:
  """Kernel-launching instructions (fusions by kind, custom calls by target, library ops) of the
  while body with the most of them: the loop over steps."""
  return _kernel_counts(loop_body(hlo_text))


def loop_collectives(hlo_text: str) -> dict:
  """Collectives of that loop body, by kind: {"all-reduce": {"count": n, "bytes": b}, ...}, b the
  bytes of their results on one device (an all-reduce's reduced array, an all-gather's gathered
  one): what a tensor-parallel step exchanges, read off the compiled program. {} on one device."""
  out = {}
  for line in loop_body(hlo_text):
    op = _COLLECTIVE_OP.search(line)
    if not op:
      continue
    n_bytes = sum(int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
                  * _dtype_bytes(dtype) for dtype, dims in _ARRAY_TYPE.findall(op.group(1)))
    entry = out.setdefault(op.group(2), {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += int(n_bytes)
  return out


def _dtype_bytes(hlo_dtype: str) -> int:
  """An HLO element type's bytes: pred 1, bf16 2, f32 / s32 / u32 4, ..."""
  return {"pred": 1, "bf16": 2}.get(hlo_dtype) or max(int(hlo_dtype[1:]) // 8, 1)
