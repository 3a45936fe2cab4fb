"""The knapsack search: KnapSpec's dynamic program over the 2L sublayers, as one compiled program.

Items are the 2L sublayers in model order (item 2l = attention of layer l, item 2l + 1 = its MLP,
as in SkipMask). Skipping item i saves w_i units of latency (w_attn or w_mlp, small integers
from `integer_weights`). For every total saving ("budget") j = 0..K the DP keeps one hidden state
of the R most recent confirmed tokens, g[j] [R, D]: the best draft found so far that skipped
exactly weight j, "best" meaning closest by cosine to the full model's residual stream at the
same depth. Item i turns the table into the next one:

  execute: h_e[j] = f_i(g[j])          (all budgets in one batched call)
  skip:    h_s[j] = g[j - w_i]          (the skipped sublayer is the identity)
  keep whichever is closer to the full model (summed cosine over the R tokens; tie -> execute).

A state whose mean cosine drops below tau is pruned (dead) and never computed again. Walking
the recorded skip bits back from every final budget gives one candidate skip set per budget;
stage 2 (the TPT grid search) then picks among them using each candidate's top-1 agreement with
the full model over the same R tokens.

Layout of the compiled program:
  * `lax.scan` over layers (two items per step; one in CLaSp's whole-layer mode) with per-layer
    weights stacked to [L, ...];
  * the K + 1 budget states are the batch dimension of the sublayer calls; only the rows of live
    states are computed (`_map_live`), because most of the table is dead or out of budget: with
    weights (1, 1) only 31 of SmolLM2's 91 rows can be in budget at all;
  * each item is model.py's own sublayer (attention_sublayer, mlp_sublayer; `block` for a
    whole layer), so the search scores exactly the layer body the draft will run; only the
    attention kernel is the search's own: every branch reads the shared cached prefix (the full
    model's keys/values, positions < p0, read-only) plus its own R keys, causally
    (`_branch_attend`);
  * the reference (the full model) is not a separate pass: the budget-0 state skips nothing,
    so its executed output at item i IS the full model's residual at depth i + 1.
Weights and p0 are arrays, so re-running the search as the context grows never recompiles;
only R, the attention bucket and the table size are static.

Also here, on the same machinery: `exit_agreement`, DEL's per-exit-layer top-1 agreement, and
`mask_agreement`, one given skip set's per-token agreement and confidence (a candidate's
statistics for a skip set the DP did not produce).
Costs on the 2-core CPU (SmolLM2-135M f32, experiments/time_knapsack.py): R = 8 at a 6K
prefix, 0.9 s with weights (1, 1) and 2 s with (5, 1); the prefix attention of the live states
is about half of it, the stacking copies (weights unless pre-stacked, cached prefix) ~0.35 s.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from knapspec_jax import compile_cache, decoding, sharding
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask

DEFAULT_MAX_WEIGHT = 5  # the official cap on an item's integer weight
DEFAULT_TAU = 0.5  # the official pruning threshold on a state's mean cosine
# Budget states computed together in one sublayer call. Live states are packed to the front, so
# at most CHUNK - 1 dead rows are computed per item. On the 2-core CPU (SmolLM2, R = 8) 16 beat
# 4, 8 and 32: fewer rows starve the matmuls, more push a prefix block's scores out of cache.
DEFAULT_CHUNK = 16
# Prefix keys per step of the attention's online softmax.
PREFIX_BLOCK = 512


class KnapsackResult(NamedTuple):
  """One row per budget j = 0..k_max (J = k_max + 1 rows)."""

  skip_bits: jax.Array  # bool [J, 2L] item 2l = attention of layer l, 2l + 1 = its MLP
  alive: jax.Array  # bool [J] a candidate exists for this exact budget
  budget: jax.Array  # int32 [J] j: the total weight of the skipped items
  cosine: jax.Array  # float32 [J] mean over the R tokens of the cosine to the full model's output
  agreement: jax.Array  # float32 [J] fraction of the R tokens whose top-1 matches the full model's
  ref_top1: jax.Array  # int32 [R] the full model's top-1 token after each of the R tokens
  agree: jax.Array  # bool [J, R] the candidate's top-1 matches the full model's, token by token
  top1_prob: jax.Array  # float32 [J, R] the candidate's top-1 probability (the draft's confidence)


class Candidate(NamedTuple):
  """One live budget of a result, on the host."""

  skip: SkipMask
  budget: int
  cosine: float
  agreement: float
  agree: tuple[bool, ...] = ()  # per reference token (KnapsackResult.agree)
  top1_prob: tuple[float, ...] = ()  # per reference token (KnapsackResult.top1_prob)


def integer_weights(t_attn: float, t_mlp: float,
                    max_weight: int = DEFAULT_MAX_WEIGHT) -> tuple[int, int]:
  """The paper's integer item weights (w_attn, w_mlp) for sublayer latencies t_attn, t_mlp.

  The cheaper sublayer weighs 1, the other round(ratio) capped at max_weight. Equal latencies
  give (1, 1).
  """
  if t_attn <= 0 or t_mlp <= 0:
    raise ValueError(f"latencies must be positive, got t_attn={t_attn}, t_mlp={t_mlp}")
  if t_attn > t_mlp:
    return min(int(round(t_attn / t_mlp)), max_weight), 1
  return 1, min(int(round(t_mlp / t_attn)), max_weight)


def budget_limit(w_attn: int, w_mlp: int, n_layers: int) -> int:
  """K = (w_attn + w_mlp) L / 2: the largest budget the search considers (half the total weight)."""
  return (w_attn + w_mlp) * n_layers // 2


def max_budget(n_layers: int, max_weight: int = DEFAULT_MAX_WEIGHT) -> int:
  """The largest K any integer weights may ask for: the static size of the DP table, minus one."""
  return budget_limit(max_weight, 1, n_layers)


def default_chunk(n_layers: int, max_weight: int = DEFAULT_MAX_WEIGHT) -> int:
  """Budget states per sublayer call for this backend: DEFAULT_CHUNK on CPU, where skipping dead
  states saves arithmetic; the whole table on accelerators, where the search is bound by kernel
  launches."""
  if jax.default_backend() == "cpu":
    return DEFAULT_CHUNK
  return max_budget(n_layers, max_weight) + 1


def stack_layers(params: model_lib.Params) -> model_lib.Params:
  """A copy of params with the per-layer dicts stacked to [L, ...] arrays (the scan's layout).

  Searching with it keeps the stacking copy out of every search (0.1-0.2 s for SmolLM2 on
  the CPU) at the price of a second copy of the layer weights; per-layer params work as well.
  """
  layers = params["layers"]
  if isinstance(layers, dict):
    return params
  return {**params, "layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}


def _token_cosine(x, ref):
  """Cosine over D of each token of x [..., R, D] with ref [R, D]: [..., R], in float32 whatever
  the states' dtype. The DP keeps whichever of two states is closer, and in bfloat16 (8 bits of
  mantissa) cosines near 1 are 0.004 apart: a bf16 search compared them at that grain. On the CPU
  (Qwen2.5-Coder-1.5B, a 2K document; BENCHMARKS.md 10.15) the bf16 search picked a set whose
  rounds reached 0.99-1.01x AR on the H200's costs where the float32 search's reached 1.10x."""
  x, ref = x.astype(jnp.float32), ref.astype(jnp.float32)
  unit = lambda a: a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  return jnp.sum(unit(x) * unit(ref), axis=-1)


def _map_live(fn: Callable, x, live, chunk: int):
  """fn over the rows of x [J, ...] whose `live` flag is set, `chunk` rows per call.

  Live rows are packed to the front and a while loop runs only over the chunks that hold them,
  so the cost follows the number of live rows, not J. Dead rows get zeros. fn may return a
  pytree of arrays, each with the chunk's rows first.
  """
  n_rows = x.shape[0]
  n_pad = -(-n_rows // chunk) * chunk
  order = jnp.argsort(~live, stable=True)  # [J] live rows first, in budget order
  packed = jnp.pad(x[order], [(0, n_pad - n_rows)] + [(0, 0)] * (x.ndim - 1))
  out_shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((chunk,) + x.shape[1:], x.dtype))
  out = jax.tree.map(lambda o: jnp.zeros((n_pad,) + o.shape[1:], o.dtype), out_shape)

  def run_chunk(c, out):
    rows = jax.lax.dynamic_slice_in_dim(packed, c * chunk, chunk)
    return jax.tree.map(lambda o, r: jax.lax.dynamic_update_slice_in_dim(o, r, c * chunk, axis=0),
                        out, fn(rows))

  n_chunks = (jnp.sum(live, dtype=jnp.int32) + chunk - 1) // chunk
  out = jax.lax.fori_loop(0, n_chunks, run_chunk, out)
  return jax.tree.map(lambda o: jnp.zeros_like(o[:n_rows]).at[order].set(o[:n_rows]), out)


def round_starts(r: int, round_len: int = 0) -> np.ndarray:
  """Each of R reference tokens' offset of its round's first token, when the search takes them
  in rounds of round_len (0: one block of R, every offset 0): int [R]."""
  if not 0 <= round_len <= r or (round_len and r % round_len):
    raise ValueError(f"round_len must be 0 (one block) or divide the R={r} reference tokens, "
                     f"got {round_len}")
  return np.arange(r) // (round_len or r) * (round_len or r)


def _branch_attend(cfg: ModelConfig, q, k, v, prefix_k, prefix_v, p0, round_len: int = 0):
  """The attention of B independent branches of the same R tokens (the attend_kv of
  model.attention_sublayer in the search): q [B,R,H,hd], k/v [B,R,KV,hd] -> [B, R, H*hd].

  Each branch attends causally to its own R keys and to the shared prefix, prefix_k/v
  [KV, S, hd] (positions < p0 are valid). With round_len L (0: R, the block), the R tokens are
  taken in rounds of L, as speculation rounds draft them: a token sees its own branch's keys
  only within its round and the prefix, the full model's keys, up to its round's start (the
  cache must then hold the full model's keys at positions < p0 + R - L; see `round_starts`).
  One joint softmax, computed online over blocks of PREFIX_BLOCK prefix keys, seeded with the
  own keys: the prefix is never copied per branch (model.attend takes one key array per batch
  row), a block's scores stay in cache (one pass over all S scores was 3x slower at S = 6K),
  and blocks past the last round's start (p0 for the block) are not visited at all.
  The configured kernels (cfg.attention, cfg.window_attention) attend one sequence over its own
  cache; the branches share a prefix but not their own keys, so they have no such cache, and
  this is the search's kernel whatever the config says.
  """
  b, r = q.shape[:2]
  kv, hd = cfg.n_kv_heads, cfg.head_dim
  groups = cfg.n_heads // kv
  q = q.reshape(b, r, kv, groups, hd) * (hd ** -0.5)
  f32 = dict(preferred_element_type=jnp.float32)
  rows = lambda a: a.reshape(kv, b * r * groups, *a.shape[4:])  # [KV, M, ...], M = B*R*G
  q_rows = rows(q.transpose(2, 0, 1, 3, 4))  # [KV, M, hd]

  with jax.named_scope("own_keys"):
    s_own = jnp.einsum("brkgd,bskd->kbrgs", q, k, **f32)  # [KV, B, R, G, R]
    start = round_starts(r, round_len)  # [R] each token's round start, 0 .. R - 1
    own = np.tril(np.ones((r, r), bool)) & (start[:, None] == start[None, :])
    s_own = jnp.where(own[:, None, :], s_own, -jnp.inf)
    top = s_own.max(-1, keepdims=True)  # finite: each query sees its own key
    p_own = jnp.exp(s_own - top)
    acc = jnp.einsum("kbrgs,bskd->kbrgd", p_own.astype(v.dtype), v, **f32)
    top, total, acc = rows(top[..., 0]), rows(p_own.sum(-1)), rows(acc)  # [KV,M], [KV,M], [KV,M,hd]

  block = min(PREFIX_BLOCK, prefix_k.shape[1])  # setup pads S to a multiple of it
  limit = p0 + jnp.asarray(np.repeat(np.tile(start, b), groups))  # [M] prefix keys a row sees

  def prefix_block(c, carry):
    top, total, acc = carry
    keys = jax.lax.dynamic_slice_in_dim(prefix_k, c * block, block, axis=1)  # [KV, blk, hd]
    values = jax.lax.dynamic_slice_in_dim(prefix_v, c * block, block, axis=1)
    scores = jnp.einsum("kmd,ksd->kms", q_rows, keys, **f32)  # [KV, M, blk]
    scores = jnp.where(c * block + jnp.arange(block) < limit[:, None], scores, -jnp.inf)
    new_top = jnp.maximum(top, scores.max(-1))
    probs = jnp.exp(scores - new_top[..., None])
    rescale = jnp.exp(top - new_top)
    acc = acc * rescale[..., None] + jnp.einsum("kms,ksd->kmd", probs.astype(values.dtype),
                                                values, **f32)
    return new_top, total * rescale + probs.sum(-1), acc

  with jax.named_scope("prefix"):
    n_blocks = (p0 + int(start[-1]) + block - 1) // block
    top, total, acc = jax.lax.fori_loop(0, n_blocks, prefix_block, (top, total, acc))
  out = (acc / total[..., None]).astype(v.dtype).reshape(kv, b, r, groups, hd)
  return out.transpose(1, 2, 0, 3, 4).reshape(b, r, cfg.n_heads * hd)


def _knapsack_item(g, alive, sublayer: Callable, w, can_skip, in_budget, *, tau: float,
                   chunk: int):
  """One DP item: g [J, R, D] and alive [J] after item i-1 -> after item i, and the skip bits.

  Returns (g, alive, skipped [J] bool, ref [R, D] the full model's residual after item i).
  """
  n_states, r, _ = g.shape
  j = jnp.arange(n_states)
  h_exec = _map_live(sublayer, g, alive, chunk)  # [J, R, D]
  ref = h_exec[0]  # budget 0 skips nothing: it is the full model

  parent = jnp.maximum(j - w, 0)
  h_skip = g[parent]  # [J, R, D]
  skip_possible = can_skip & (j >= w) & alive[parent]

  cos_exec = jnp.sum(_token_cosine(h_exec, ref), axis=-1)  # [J] summed over the R tokens
  cos_skip = jnp.sum(_token_cosine(h_skip, ref), axis=-1)
  exec_ok = alive & (cos_exec / r >= tau)
  skip_ok = skip_possible & (cos_skip / r >= tau)
  skipped = skip_ok & (~exec_ok | (cos_skip > cos_exec))
  alive = (exec_ok | skip_ok) & in_budget
  g = jnp.where(skipped[:, None, None], h_skip, h_exec)
  return g, alive, skipped & alive, ref


class _Branches(NamedTuple):
  """What every branch of the R tokens shares: weights, cached prefix, positions, embeddings."""

  layers: dict  # per-layer weights stacked to [L, ...]
  prefix_k: jax.Array  # [L, KV, S, hd] the full model's keys, S padded to whole prefix blocks
  prefix_v: jax.Array  # [L, KV, S, hd]
  cos: jax.Array  # [R, hd] RoPE tables of positions p0 .. p0 + R - 1
  sin: jax.Array
  x0: jax.Array  # [R, D] embeddings of the R tokens


def _branches(params, cache: KVCache, tokens, p0, cfg: ModelConfig, attn_len: int) -> _Branches:
  if not tokens.shape[0] <= attn_len <= cache.capacity:
    raise ValueError(f"attn_len={attn_len} must cover the R={tokens.shape[0]} tokens and fit "
                     f"the cache ({cache.capacity} positions)")
  with jax.named_scope("setup"):
    # Each KV head's keys contiguous for the score matmuls; the padding to whole blocks lies
    # past p0, so it is masked.
    n_pad = -attn_len % min(PREFIX_BLOCK, attn_len)
    stack = lambda kv: jnp.pad(jnp.stack([a[0, :attn_len].transpose(1, 0, 2) for a in kv]),
                               [(0, 0), (0, 0), (0, n_pad), (0, 0)])
    cos, sin = model_lib.rope_tables(cfg, p0 + jnp.arange(tokens.shape[0], dtype=jnp.int32))
    return _Branches(stack_layers(params)["layers"], stack(cache.k), stack(cache.v), cos, sin,
                     params["embed"][tokens])


def _top1(params, cfg: ModelConfig, x):
  """The greedy token after each residual state x [..., D]: int32 [...]."""
  return _top1_prob(params, cfg, x)[0]


def _top1_prob(params, cfg: ModelConfig, x):
  """The greedy token after each residual state x [..., D] (int32 [...]) and its probability
  (float32 [...]): the confidence the draft's exit compares with its threshold
  (speculative._draft takes the max of the same softmax)."""
  logits = model_lib.lm_head(params, cfg, model_lib.rms_norm(x, params["final_norm"],
                                                             cfg.norm_eps))
  top = jnp.max(logits, axis=-1)
  prob = jnp.exp(top - jax.nn.logsumexp(logits, axis=-1))
  return jnp.argmax(logits, axis=-1).astype(jnp.int32), prob


def knapsack_search(params: model_lib.Params, cache: KVCache, tokens, p0, w_attn, w_mlp, *,
                    cfg: ModelConfig, attn_len: int, k_max: int | None = None,
                    max_weight: int = DEFAULT_MAX_WEIGHT, tau: float = DEFAULT_TAU,
                    protect_ends: bool = True, whole_layers: bool = False,
                    chunk: int = DEFAULT_CHUNK, round_len: int = 0) -> KnapsackResult:
  """The DP for the R confirmed tokens `tokens` [R] at positions p0 .. p0 + R - 1 (device).

  params: per-layer (model.py) or pre-stacked (`stack_layers`) weights.
  cache: holds the full model's keys/values at positions < p0 (< p0 + R - round_len with
    round_len); read only (its cursor and any entries past those are ignored).
  p0, w_attn, w_mlp: int32 [] arrays (changing them does not recompile); weights >= 1.
  Static: attn_len, a prefix bucket with p0 + R <= attn_len <= cache capacity; k_max, the
  largest budget in the table (default: the largest K that weights <= max_weight give); tau;
  protect_ends (layers 0 and L-1 are always executed, as in the official code); whole_layers
  (CLaSp's items: a layer's attention and MLP are skipped together, weight w_attn + w_mlp,
  compared at layer outputs only); chunk (see DEFAULT_CHUNK); round_len (0: the R tokens as one
  block, each draft state seeing its own keys at every earlier reference token; L: in rounds of
  L, the full model's keys before each round, as a speculation round's drafts see them;
  `_branch_attend`).
  """
  n_layers = cfg.n_layers
  k_max = max_budget(n_layers, max_weight) if k_max is None else k_max
  n_states = k_max + 1
  w_attn = jnp.asarray(w_attn, jnp.int32)
  w_mlp = jnp.asarray(w_mlp, jnp.int32)
  budget = jnp.arange(n_states, dtype=jnp.int32)
  in_budget = budget <= budget_limit(w_attn, w_mlp, n_layers)  # [J]
  shared = _branches(params, cache, tokens, p0, cfg, attn_len)
  can_skip = np.ones(n_layers, bool)
  if protect_ends:
    can_skip[[0, -1]] = False

  def layer(carry, xs):
    g, alive = carry  # [J, R, D], [J]
    lp, pk, pv, skippable = xs
    item = lambda g, alive, sublayer, w: _knapsack_item(
        g, alive, sublayer, w, skippable, in_budget, tau=tau, chunk=chunk)
    attend = lambda q, k, v: _branch_attend(cfg, q, k, v, pk, pv, p0, round_len)
    attention = lambda x: model_lib.attention_sublayer(lp, cfg, x, shared.cos, shared.sin, attend)
    mlp = lambda x: model_lib.mlp_sublayer(lp, cfg, x)
    if whole_layers:
      with jax.named_scope("layer_item"):
        g, alive, skipped, ref = item(
            g, alive, lambda x: model_lib.block(lp, cfg, x, shared.cos, shared.sin, attend),
            w_attn + w_mlp)
      return (g, alive), (skipped[None], ref)
    with jax.named_scope("attention_item"):
      g, alive, skip_attn, _ = item(g, alive, attention, w_attn)
    with jax.named_scope("mlp_item"):
      g, alive, skip_mlp, ref = item(g, alive, mlp, w_mlp)
    return (g, alive), (jnp.stack([skip_attn, skip_mlp]), ref)

  with jax.named_scope("dp"):
    g = jnp.broadcast_to(shared.x0, (n_states,) + shared.x0.shape)  # [J, R, D]
    (g, alive), (parent_bits, refs) = jax.lax.scan(
        layer, (g, budget == 0),
        (shared.layers, shared.prefix_k, shared.prefix_v, jnp.asarray(can_skip)))
    parent_bits = parent_bits.reshape(-1, n_states)  # [items, J] skipped on the way to (item, j)
    ref_final = refs[-1]  # [R, D]

  with jax.named_scope("backtrack"):
    if whole_layers:
      item_weight = jnp.full((n_layers,), w_attn + w_mlp)
    else:
      item_weight = jnp.tile(jnp.stack([w_attn, w_mlp]), n_layers)  # [2L]

    def undo(j, xs):  # j [J]: each final budget's state index after this item
      bits, w = xs
      skipped = bits[j]
      return jnp.maximum(j - jnp.where(skipped, w, 0), 0), skipped

    _, skip_bits = jax.lax.scan(undo, budget, (parent_bits, item_weight), reverse=True)
    if whole_layers:
      skip_bits = jnp.repeat(skip_bits, 2, axis=0)
    skip_bits = skip_bits.T & alive[:, None]  # [J, 2L]

  with jax.named_scope("score"):
    cosine = jnp.mean(_token_cosine(g, ref_final), axis=-1)  # [J]
    ref_top1 = _top1(params, cfg, ref_final)  # [R]
    cand_top1, top1_prob = _map_live(lambda x: _top1_prob(params, cfg, x), g, alive,
                                     chunk)  # [J, R] each
    agree = (cand_top1 == ref_top1) & alive[:, None]
    agreement = jnp.mean(agree, axis=-1, dtype=jnp.float32)

  zero_dead = lambda a: jnp.where(alive, a, 0)
  return KnapsackResult(skip_bits=skip_bits, alive=alive, budget=budget,
                        cosine=zero_dead(cosine), agreement=zero_dead(agreement),
                        ref_top1=ref_top1, agree=agree,
                        top1_prob=jnp.where(alive[:, None], top1_prob, 0.0))


def exit_agreement_program(params: model_lib.Params, cache: KVCache, tokens, p0, *,
                           cfg: ModelConfig, attn_len: int):
  """DEL's statistic (device): for each exit layer l = 1..L, the fraction of the R tokens whose
  top-1 after layers 0..l-1 (through the final norm and LM head) matches the full model's.

  Returns float32 [L]; entry l - 1 is exit layer l (the last entry is 1).
  """
  shared = _branches(params, cache, tokens, p0, cfg, attn_len)

  def layer(x, xs):  # x [1, R, D]: the full model as a single branch
    lp, pk, pv = xs
    attend = lambda q, k, v: _branch_attend(cfg, q, k, v, pk, pv, p0)
    x = model_lib.block(lp, cfg, x, shared.cos, shared.sin, attend)
    return x, _top1(params, cfg, x[0])

  _, top1 = jax.lax.scan(layer, shared.x0[None],
                         (shared.layers, shared.prefix_k, shared.prefix_v))  # [L, R]
  return jnp.mean(top1 == top1[-1], axis=-1, dtype=jnp.float32)


def mask_agreement_program(params: model_lib.Params, cache: KVCache, tokens, p0, skip_bits, *,
                           cfg: ModelConfig, attn_len: int, round_len: int = 0):
  """A given skip set scored on the R tokens as the search scores its candidates (device): per
  token, whether the draft's top-1 matches the full model's, and the draft's top-1 probability.

  skip_bits: bool [2L] in SkipMask's item order, an array, so one program per bucket scores
  every skip set (KnapSpecConfig.search_new_buckets scores a draft kept at a lower bucket on the
  tokens of the search at a new one). round_len as in knapsack_search. Returns (agree bool [R],
  top1_prob float32 [R]).
  """
  shared = _branches(params, cache, tokens, p0, cfg, attn_len)
  bits = jnp.asarray(skip_bits, bool).reshape(cfg.n_layers, 2)

  def layer(x, xs):  # x [2, R, D]: the full model, then the draft
    lp, pk, pv, (skip_attn, skip_mlp) = xs
    attend = lambda q, k, v: _branch_attend(cfg, q, k, v, pk, pv, p0, round_len)
    for skipped, sublayer in ((skip_attn, lambda x: model_lib.attention_sublayer(
        lp, cfg, x, shared.cos, shared.sin, attend)), (skip_mlp, lambda x: model_lib.mlp_sublayer(
            lp, cfg, x))):
      y = sublayer(x)
      x = y.at[1].set(jnp.where(skipped, x[1], y[1]))
    return x, None

  x, _ = jax.lax.scan(layer, jnp.broadcast_to(shared.x0, (2,) + shared.x0.shape),
                      (shared.layers, shared.prefix_k, shared.prefix_v, (bits[:, 0], bits[:, 1])))
  top1, prob = _top1_prob(params, cfg, x)  # [2, R] each
  return top1[1] == top1[0], prob[1]


# ---------------------------------------------------------------------------------- host side

# The programs below are compiled with XLA's latency-hiding scheduler off. With it on, one run
# of any of them (they share _branches' loop over the stacked layers) left every decode program
# already loaded in the process about 9% slower for good on an H200 (AR 630 -> 570 tok/s on the
# Qwen2.5-1.5B shape; programs loaded after the run ran at full speed until the next run). With
# it off, AR stays within 1% of its speed before the run, and the search runs as fast
# (BENCHMARKS.md 10.25).
SCORING_OPTIONS = (("xla_gpu_enable_latency_hiding_scheduler", False),)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class SearchStatics:
  """knapsack_search's complete static settings (see it for each). Build it with `of`, which
  fills in the defaults and resolves max_weight into k_max, so that equal programs share one
  compile-cache entry however they were asked for."""

  cfg: ModelConfig
  attn_len: int
  k_max: int
  tau: float = DEFAULT_TAU
  protect_ends: bool = True
  whole_layers: bool = False
  chunk: int = DEFAULT_CHUNK
  round_len: int = 0
  donate_argnums = ()
  compiler_options = SCORING_OPTIONS

  @classmethod
  def of(cls, cfg: ModelConfig, attn_len: int, *, k_max: int | None = None,
         max_weight: int = DEFAULT_MAX_WEIGHT, tau: float = DEFAULT_TAU,
         protect_ends: bool = True, whole_layers: bool = False,
         chunk: int = DEFAULT_CHUNK, round_len: int = 0) -> "SearchStatics":
    k_max = max_budget(cfg.n_layers, max_weight) if k_max is None else k_max
    return cls(cfg, attn_len, k_max, float(tau), protect_ends, whole_layers, chunk, round_len)

  def run(self, params, cache, tokens, p0, w_attn, w_mlp):
    return knapsack_search(params, cache, tokens, p0, w_attn, w_mlp, cfg=self.cfg,
                           attn_len=self.attn_len, k_max=self.k_max, tau=self.tau,
                           protect_ends=self.protect_ends, whole_layers=self.whole_layers,
                           chunk=self.chunk, round_len=self.round_len)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class ExitAgreementStatics:
  """exit_agreement_program's static settings (DEL's statistic)."""

  cfg: ModelConfig
  attn_len: int
  donate_argnums = ()
  compiler_options = SCORING_OPTIONS

  def run(self, params, cache, tokens, p0):
    return exit_agreement_program(params, cache, tokens, p0, cfg=self.cfg,
                                  attn_len=self.attn_len)


@compile_cache.program
@dataclasses.dataclass(frozen=True)
class MaskAgreementStatics:
  """mask_agreement_program's static settings: one program per bucket (and round length) for
  every skip set."""

  cfg: ModelConfig
  attn_len: int
  round_len: int = 0
  donate_argnums = ()
  compiler_options = SCORING_OPTIONS

  def run(self, params, cache, tokens, p0, skip_bits):
    return mask_agreement_program(params, cache, tokens, p0, skip_bits, cfg=self.cfg,
                                  attn_len=self.attn_len, round_len=self.round_len)


def _search_args(params, cache, tokens, p0, w_attn, w_mlp):
  scalar = lambda a: jnp.asarray(a, jnp.int32)
  return (params, cache, jnp.asarray(tokens, jnp.int32), scalar(p0), scalar(w_attn),
          scalar(w_mlp))


def _abstract_inputs(params: model_lib.Params, cfg: ModelConfig, r: int) -> tuple:
  """(params, cache, tokens, p0) as the programs here take them, for R = r tokens: what a
  warm-up compiles against."""
  cache = KVCache.abstract(cfg, params["embed"].dtype,
                           sharding=sharding.cache_sharding(cfg, sharding.mesh_of(params)))
  return (params, cache, jax.ShapeDtypeStruct((r,), jnp.int32),
          jax.ShapeDtypeStruct((), jnp.int32))


def compile_search(params: model_lib.Params, cfg: ModelConfig, compiled: CompileCache, r: int,
                   *, attn_len: int, **static):
  """AOT-compiles the search for R = r tokens at this attention bucket (warm-up)."""
  round_starts(r, static.get("round_len", 0))
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  return compiled.get(SearchStatics.of(cfg, attn_len, **static),
                      _abstract_inputs(params, cfg, r) + (scalar, scalar))


def search(params: model_lib.Params, cfg: ModelConfig, cache: KVCache, tokens, p0: int,
           w_attn: int, w_mlp: int, compiled: CompileCache, *, attn_len: int | None = None,
           **static) -> KnapsackResult:
  """Runs the search through the compile cache: one compile per (R, attention bucket, static
  settings), none when only the weights, p0 or the cache contents change.

  attn_len defaults to the decoding attention bucket of p0 + R.
  """
  args = _search_args(params, cache, tokens, p0, w_attn, w_mlp)
  round_starts(args[2].shape[0], static.get("round_len", 0))
  if attn_len is None:
    attn_len = decoding.attn_bucket(int(p0) + args[2].shape[0], cache.capacity)
  return compiled.get(SearchStatics.of(cfg, attn_len, **static), args)(*args)


def compile_exit_agreement(params: model_lib.Params, cfg: ModelConfig, compiled: CompileCache,
                           r: int, *, attn_len: int):
  """AOT-compiles `exit_agreement_program` for R = r tokens at this bucket (warm-up)."""
  return compiled.get(ExitAgreementStatics(cfg, attn_len), _abstract_inputs(params, cfg, r))


def exit_agreement(params: model_lib.Params, cfg: ModelConfig, cache: KVCache, tokens, p0: int,
                   compiled: CompileCache, *, attn_len: int | None = None) -> np.ndarray:
  """Host wrapper of `exit_agreement_program`: float [L], entry l - 1 for exit layer l."""
  args = _search_args(params, cache, tokens, p0, 0, 0)[:4]
  if attn_len is None:
    attn_len = decoding.attn_bucket(int(p0) + args[2].shape[0], cache.capacity)
  fn = compiled.get(ExitAgreementStatics(cfg, attn_len), args)
  return np.asarray(jax.device_get(fn(*args)))


def compile_mask_agreement(params: model_lib.Params, cfg: ModelConfig, compiled: CompileCache,
                           r: int, *, attn_len: int, round_len: int = 0):
  """AOT-compiles `mask_agreement_program` for R = r tokens at this bucket (warm-up)."""
  round_starts(r, round_len)
  bits = jax.ShapeDtypeStruct((2 * cfg.n_layers,), jnp.bool_)
  return compiled.get(MaskAgreementStatics(cfg, attn_len, round_len),
                      _abstract_inputs(params, cfg, r) + (bits,))


def mask_agreement(params: model_lib.Params, cfg: ModelConfig, cache: KVCache, tokens, p0: int,
                   skip: SkipMask, compiled: CompileCache, *, attn_len: int | None = None,
                   round_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Host wrapper of `mask_agreement_program`: (agree bool [R], top1_prob float [R]) of `skip`
  on the R tokens at p0, the statistics a search's Candidate carries for its own skip sets."""
  skip.check(cfg.n_layers)
  args = _search_args(params, cache, tokens, p0, 0, 0)[:4] + (jnp.asarray(skip.skip, bool),)
  round_starts(args[2].shape[0], round_len)
  if attn_len is None:
    attn_len = decoding.attn_bucket(int(p0) + args[2].shape[0], cache.capacity)
  agree, prob = jax.device_get(
      compiled.get(MaskAgreementStatics(cfg, attn_len, round_len), args)(*args))
  return np.asarray(agree, bool), np.asarray(prob, np.float64)


def candidates(result: KnapsackResult) -> list[Candidate]:
  """The live rows of a result as host values, in increasing budget."""
  bits, alive, budget, cosine, agreement, agree, prob = jax.device_get(
      (result.skip_bits, result.alive, result.budget, result.cosine, result.agreement,
       result.agree, result.top1_prob))
  return [Candidate(SkipMask(tuple(bool(b) for b in bits[j])), int(budget[j]),
                    float(cosine[j]), float(agreement[j]), tuple(bool(a) for a in agree[j]),
                    tuple(float(q) for q in prob[j]))
          for j in np.flatnonzero(alive)]
