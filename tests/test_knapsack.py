"""The knapsack search against an independent NumPy DP (its own float64 Llama forward, plain
loops over items and budgets, its own backtrack), on a small random model (prefix spanning two
blocks of the attention's online softmax) and on SmolLM2-135M (fused projections); CLaSp's
whole-layer mode and DEL's exit agreement on the same reference; candidates replayed through
model.forward; and no recompiles when weights or p0 change.

Float32 (JAX) and float64 (NumPy) may resolve an exact tie differently: a choice whose two
options have mean cosines within TIE_TOL, or a state whose mean cosine is within TIE_TOL of tau.
Such a flip changes every state built on it, so a budget whose results differ is excused only
when the NumPy DP saw a tie-level decision at some budget <= it (budgets only grow along a
path). Excused differences are counted and printed; everything else must match exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from knapspec_jax import api, knapsack
from knapspec_jax import model as model_lib
from knapspec_jax.compile_cache import CompileCache
from knapspec_jax.config import ModelConfig
from knapspec_jax.kv_cache import KVCache
from knapspec_jax.skip_mask import SkipMask, SkipMaskError

TIE_TOL = 1e-6
TAU = 0.5
R = 8
WEIGHT_PAIRS = ((1, 1), (2, 1), (5, 1), (1, 3))


# ------------------------------------------------------------------ the NumPy reference model

class NumpyLlama:
  """Llama blocks in float64: RMSNorm, rotate-half RoPE, GQA attention, SwiGLU."""

  def __init__(self, params, cfg: ModelConfig):
    assert cfg.arch == "llama" and not cfg.rope_scaling, "the reference covers plain Llama only"
    to64 = lambda a: np.asarray(a, np.float64)
    self.cfg = cfg
    self.embed = to64(params["embed"])
    self.final_norm = to64(params["final_norm"])
    self.head = self.embed.T if cfg.tie_embeddings else to64(params["lm_head"])
    self.layers = [{k: np.ascontiguousarray(v) for k, v in self._unfused(
        {k: to64(v) for k, v in lp.items()}).items()} for lp in params["layers"]]

  def _unfused(self, lp):
    """Splits fused q/k/v and gate/up weights (model.fuse_projections) back into their parts."""
    if "wqkv" in lp:
      q_end = self.cfg.n_heads * self.cfg.head_dim
      k_end = q_end + self.cfg.n_kv_heads * self.cfg.head_dim
      wqkv = lp.pop("wqkv")
      lp.update(wq=wqkv[:, :q_end], wk=wqkv[:, q_end:k_end], wv=wqkv[:, k_end:])
    if "w_gate_up" in lp:
      lp["w_gate"], lp["w_up"] = np.split(lp.pop("w_gate_up"), 2, axis=-1)
    return lp

  @staticmethod
  def matmul(x, w):  # x [..., D] as one 2-D BLAS call
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + w.shape[1:])

  def rms(self, x, w):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)

  def rope(self, x, positions):  # x [..., T, heads, hd]
    hd = x.shape[-1]
    inv_freq = 1.0 / self.cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    angles = np.asarray(positions, np.float64)[:, None] * inv_freq[None]
    cos = np.cos(np.concatenate([angles, angles], -1))[:, None]
    sin = np.sin(np.concatenate([angles, angles], -1))[:, None]
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rotated * sin

  def attention(self, layer, x, positions, prefix_k, prefix_v):
    """x [N, T, D]: N branches, each attending to the prefix keys [P, KV, hd] and causally to
    its own T keys. Returns (new x, own keys, own values)."""
    c, lp = self.cfg, self.layers[layer]
    n, t, _ = x.shape
    h = self.rms(x, lp["attn_norm"])
    q = self.rope(self.matmul(h, lp["wq"]).reshape(n, t, c.n_heads, c.head_dim), positions)
    k = self.rope(self.matmul(h, lp["wk"]).reshape(n, t, c.n_kv_heads, c.head_dim), positions)
    v = self.matmul(h, lp["wv"]).reshape(n, t, c.n_kv_heads, c.head_dim)
    n_prefix = prefix_k.shape[0]
    keys = np.concatenate([np.broadcast_to(prefix_k, (n,) + prefix_k.shape), k], axis=1)
    values = np.concatenate([np.broadcast_to(prefix_v, (n,) + prefix_v.shape), v], axis=1)
    visible = np.arange(n_prefix + t)[None, :] <= n_prefix + np.arange(t)[:, None]
    out = np.empty((n, t, c.n_heads, c.head_dim))
    for head in range(c.n_heads):
      kv_head = head // (c.n_heads // c.n_kv_heads)
      scores = q[:, :, head] @ keys[:, :, kv_head].transpose(0, 2, 1) / np.sqrt(c.head_dim)
      scores = np.where(visible, scores, -np.inf)
      probs = np.exp(scores - scores.max(-1, keepdims=True))
      out[:, :, head] = (probs / probs.sum(-1, keepdims=True)) @ values[:, :, kv_head]
    return x + self.matmul(out.reshape(n, t, -1), lp["wo"]), k, v

  def mlp(self, layer, x):  # x [..., D]
    lp = self.layers[layer]
    h = self.rms(x, lp["mlp_norm"])
    gate = self.matmul(h, lp["w_gate"])
    return x + self.matmul(gate / (1 + np.exp(-gate)) * self.matmul(h, lp["w_up"]), lp["w_down"])

  def prefill(self, prompt):
    """Per-layer keys and values [P, KV, hd] of the full model over the prompt."""
    x, kv = self.embed[prompt][None], []
    for layer in range(self.cfg.n_layers):
      x, k, v = self.attention(layer, x, np.arange(len(prompt)), *self.empty_prefix())
      kv.append((k[0], v[0]))
      x = self.mlp(layer, x)
    return kv

  def empty_prefix(self):
    shape = (0, self.cfg.n_kv_heads, self.cfg.head_dim)
    return np.zeros(shape), np.zeros(shape)

  def top1(self, x):  # [..., D] -> top-1 token and the gap to the runner-up
    logits = self.matmul(self.rms(x, self.final_norm), self.head)
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return np.argmax(logits, axis=-1), top2[..., 1] - top2[..., 0]

  def top1_prob(self, x):  # [..., D] -> the top-1 token's softmax probability
    logits = self.matmul(self.rms(x, self.final_norm), self.head)
    logits = logits - logits.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(logits).sum(axis=-1)


def mean_cosine(x, ref):  # x [R, D], ref [R, D] -> mean over tokens
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  return float(np.mean(np.sum(unit(x) * unit(ref), axis=-1)))


@dataclasses.dataclass
class NumpyDP:
  skip_sets: dict[int, tuple[bool, ...]]  # final budget -> skip bits
  cosine: dict[int, float]
  agreement: dict[int, float]
  top1_prob: dict[int, np.ndarray]  # [R] per budget
  close_logits: dict[int, int]  # tokens whose top-1 margin is too small to compare across dtypes
  tie_budgets: list[int]  # budgets at which a tie-level decision was taken
  ref_top1: np.ndarray


def numpy_attention_in_rounds(m: NumpyLlama, layer, x, positions, prefix_kv, round_len):
  """x [N, R, D] through layer's attention: one block over prefix_kv (round_len 0), or in
  rounds of round_len tokens, each over the full model's keys up to its start (prefix_kv then
  holds them for every position before the R tokens' last round) and its own keys within it."""
  k_all, v_all = prefix_kv[layer]
  r = x.shape[1]
  if not round_len:
    p0 = positions[0]
    return m.attention(layer, x, positions, k_all[:p0], v_all[:p0])[0]
  return np.concatenate([
      m.attention(layer, x[:, s:s + round_len], positions[s:s + round_len],
                  k_all[:positions[s]], v_all[:positions[s]])[0]
      for s in range(0, r, round_len)], axis=1)


def numpy_knapsack(m: NumpyLlama, prefix_kv, tokens, p0, w_attn, w_mlp, k_max,
                   protect_ends=True, whole_layers=False, round_len=0) -> NumpyDP:
  """prefix_kv: the full model's keys and values, per layer, at positions < p0 (round_len 0)
  or up to the R tokens' last round (numpy_attention_in_rounds)."""
  n_layers, r = m.cfg.n_layers, len(tokens)
  positions = p0 + np.arange(r)
  limit = min((w_attn + w_mlp) * n_layers // 2, k_max)

  def run_sublayer(i, x):  # x [N, R, D]: all live states in one call, as the DP does
    layer = i // 2
    if i % 2 == 0:
      return numpy_attention_in_rounds(m, layer, x, positions, prefix_kv, round_len)
    return m.mlp(layer, x)

  # An item: (its sublayers, its weight, whether it may be skipped).
  items = []
  for layer in range(n_layers):
    skippable = not (protect_ends and layer in (0, n_layers - 1))
    if whole_layers:
      items.append(((2 * layer, 2 * layer + 1), w_attn + w_mlp, skippable))
    else:
      items += [((2 * layer,), w_attn, skippable), ((2 * layer + 1,), w_mlp, skippable)]

  def run_item(item, x):
    for i in item[0]:
      x = run_sublayer(i, x)
    return x

  ref = [m.embed[tokens]]
  for item in items:
    ref.append(run_item(item, ref[-1][None])[0])

  states = {0: ref[0]}  # budget -> [R, D], live states only
  parents, tie_budgets = [], []
  for n, item in enumerate(items):
    _, w, skippable = item
    executed = dict(zip(states, run_item(item, np.stack(list(states.values())))))
    new_states, skipped = {}, {}
    for j in range(limit + 1):
      options = []  # (mean cosine, skipped, state)
      if j in states:
        options.append((mean_cosine(executed[j], ref[n + 1]), False, executed[j]))
      if skippable and j - w in states:
        options.append((mean_cosine(states[j - w], ref[n + 1]), True, states[j - w]))
      if any(abs(cos - TAU) < TIE_TOL for cos, _, _ in options):
        tie_budgets.append(j)
      options = [o for o in options if o[0] >= TAU]
      if len(options) == 2 and abs(options[0][0] - options[1][0]) < TIE_TOL:
        tie_budgets.append(j)
      if not options:
        continue
      best = options[0]
      if len(options) == 2 and options[1][0] > options[0][0]:
        best = options[1]
      new_states[j], skipped[j] = best[2], best[1]
    states = new_states
    parents.append(skipped)

  skip_sets = {}
  for final in states:
    bits, j = [False] * (2 * n_layers), final
    for n in reversed(range(len(items))):
      if parents[n][j]:
        for i in items[n][0]:
          bits[i] = True
        j -= items[n][1]
    assert j == 0
    skip_sets[final] = tuple(bits)

  ref_top1, ref_gap = m.top1(ref[-1])
  agreement, close = {}, {}
  for j, x in states.items():
    top1, gap = m.top1(x)
    agreement[j] = float(np.mean(top1 == ref_top1))
    close[j] = int(np.sum(np.minimum(gap, ref_gap) < 1e-3))
  return NumpyDP(skip_sets, {j: mean_cosine(x, ref[-1]) for j, x in states.items()},
                 agreement, {j: m.top1_prob(x) for j, x in states.items()}, close, tie_budgets,
                 ref_top1)


# ---------------------------------------------------------------------------- comparison

@dataclasses.dataclass
class Setup:
  cfg: ModelConfig
  params: dict
  stacked: dict
  cache: KVCache
  np_model: NumpyLlama
  np_prefix: list
  tokens: np.ndarray
  p0: int
  attn_len: int
  compiled: CompileCache
  np_full: list  # the NumPy full model's keys/values through the R tokens (rounds' prefixes)


def make_setup(params, cfg, prompt, p0, attn_len) -> Setup:
  """The JAX cache is filled by model.forward over the whole prompt, so positions >= p0 hold
  keys the block search must ignore (and the full model's keys that a search in rounds reads);
  the NumPy side prefills prompt[:p0] and prompt[:p0 + R] itself."""
  cache = KVCache.create(cfg)
  cache = model_lib.forward(params, cfg, jnp.asarray(prompt)[None], cache,
                            skip=SkipMask.none(cfg.n_layers), attn_len=attn_len).cache
  np_model = NumpyLlama(params, cfg)
  tokens = np.asarray(prompt[p0:p0 + R], np.int32)
  return Setup(cfg, params, knapsack.stack_layers(params), cache, np_model,
               np_model.prefill(prompt[:p0]), tokens, p0, attn_len, CompileCache(),
               np_model.prefill(prompt[:p0 + R]))


def compare(setup: Setup, w_attn, w_mlp, k_max=None, stacked=True, whole_layers=False,
            label="", round_len=0):
  cfg = setup.cfg
  k_max = knapsack.max_budget(cfg.n_layers) if k_max is None else k_max
  result = knapsack.search(setup.stacked if stacked else setup.params, cfg, setup.cache,
                           setup.tokens, setup.p0, w_attn, w_mlp, setup.compiled,
                           attn_len=setup.attn_len, k_max=k_max, whole_layers=whole_layers,
                           round_len=round_len)
  want = numpy_knapsack(setup.np_model, setup.np_full if round_len else setup.np_prefix,
                        setup.tokens, setup.p0, w_attn, w_mlp, k_max, whole_layers=whole_layers,
                        round_len=round_len)
  got = {c.budget: c for c in knapsack.candidates(result)}
  np.testing.assert_array_equal(np.asarray(result.ref_top1), want.ref_top1)
  limit = min(knapsack.budget_limit(w_attn, w_mlp, cfg.n_layers), k_max)
  assert max(got) <= limit

  first_tie = min(want.tie_budgets, default=np.inf)
  excused, cos_err = [], 0.0
  for j in range(k_max + 1):
    same = j in got and j in want.skip_sets and got[j].skip.skip == want.skip_sets[j]
    if same:
      cos_err = max(cos_err, abs(got[j].cosine - want.cosine[j]))
      assert abs(got[j].cosine - want.cosine[j]) < 1e-4, (j, got[j].cosine, want.cosine[j])
      agree_diff = abs(got[j].agreement - want.agreement[j]) * len(setup.tokens)
      assert agree_diff <= want.close_logits[j] + 1e-9, (j, got[j], want.agreement[j])
      assert sum(got[j].agree) == round(got[j].agreement * len(setup.tokens))
      np.testing.assert_allclose(got[j].top1_prob, want.top1_prob[j], rtol=1e-3, atol=1e-5)
      got[j].skip.check(cfg.n_layers, protect_ends=True)
      if whole_layers:
        assert got[j].skip.attn_skipped == got[j].skip.mlp_skipped
      continue
    if (j in got) or (j in want.skip_sets):
      assert j >= first_tie, (
          f"budget {j}: jax {got[j].skip if j in got else 'dead'} vs numpy "
          f"{SkipMask(want.skip_sets[j]) if j in want.skip_sets else 'dead'} without a tie")
      excused.append(j)
  print(f"{label} w=({w_attn},{w_mlp}): {len(got)} live budgets of {limit + 1}, "
        f"{len(excused)} tie-level differences {excused}, max |cos diff| {cos_err:.1e}")
  return got, excused


# ------------------------------------------------------------------------------------ tests

def test_integer_weights():
  assert knapsack.integer_weights(1.0, 1.0) == (1, 1)
  assert knapsack.integer_weights(3.4, 1.0) == (3, 1)
  assert knapsack.integer_weights(30.0, 1.0) == (5, 1)
  assert knapsack.integer_weights(0.3, 0.5) == (1, 2)
  assert knapsack.integer_weights(0.1, 5.0, max_weight=4) == (1, 4)
  assert knapsack.budget_limit(5, 1, 30) == knapsack.max_budget(30) == 90


@pytest.fixture(scope="module")
def random_setup():
  cfg = ModelConfig(arch="llama", vocab_size=256, d_model=64, d_ff=128, n_layers=6, n_heads=4,
                    n_kv_heads=2, head_dim=16, max_seq_len=2048)
  # Large weights make sublayers matter, so cosines spread out and tau prunes some states.
  params = model_lib.init_random_params(cfg, jax.random.PRNGKey(0), scale=0.25)
  prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, 700).astype(np.int32)
  # p0 past one block of the attention's prefix loop, so its online softmax spans two blocks.
  assert knapsack.PREFIX_BLOCK < 650 < 1024 - R
  return make_setup(params, cfg, prompt, p0=650, attn_len=1024)


@pytest.mark.parametrize("w_attn,w_mlp", WEIGHT_PAIRS)
def test_random_model_matches_numpy(random_setup, w_attn, w_mlp):
  got, _ = compare(random_setup, w_attn, w_mlp, label="random")
  assert len(got) > 1


def test_random_model_small_table_and_unstacked(random_setup):
  """k_max below K caps the table; per-layer params give the same result as stacked ones."""
  compare(random_setup, 2, 1, k_max=5, stacked=False, label="random k_max=5")


@pytest.mark.parametrize("w_attn,w_mlp", ((1, 1), (2, 1)))
def test_random_model_whole_layers(random_setup, w_attn, w_mlp):
  got, _ = compare(random_setup, w_attn, w_mlp, whole_layers=True, label="random whole layers")
  assert len(got) > 1


@pytest.mark.parametrize("round_len", (1, 2, 4))
def test_random_model_in_rounds_matches_numpy(random_setup, round_len):
  """KnapSpecConfig.search_round_len: the DP over the R tokens taken in rounds of L, each state
  seeing the full model's keys before its round and its own within it, against the NumPy DP
  that runs each round over its own prefix (BENCHMARKS.md 10.46: the block view predicted
  Qwen2.5-Coder-1.5B's drafts 0.13-0.21x under the rounds they then made)."""
  got, _ = compare(random_setup, 2, 1, round_len=round_len, label=f"random rounds of {round_len}")
  assert len(got) > 1


def test_round_len_must_divide_the_reference_tokens(random_setup):
  s = random_setup
  for bad in (3, R + 1, -1):
    with pytest.raises(ValueError, match=f"round_len must be 0 .* got {bad}"):
      knapsack.search(s.stacked, s.cfg, s.cache, s.tokens, s.p0, 2, 1, s.compiled,
                      attn_len=s.attn_len, round_len=bad)
    with pytest.raises(ValueError, match="round_len must be 0"):
      knapsack.mask_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0,
                              SkipMask.none(s.cfg.n_layers), s.compiled, attn_len=s.attn_len,
                              round_len=bad)


def test_candidates_replay_through_the_model(random_setup):
  """A candidate's cosine and agreement are those of model.forward with its skip mask."""
  s = random_setup
  found = knapsack.candidates(knapsack.search(s.stacked, s.cfg, s.cache, s.tokens, s.p0, 2, 1,
                                              s.compiled, attn_len=s.attn_len))
  run = lambda skip: model_lib.forward(s.params, s.cfg, jnp.asarray(s.tokens)[None],
                                       s.cache.rollback(s.p0), skip=skip, attn_len=s.attn_len,
                                       collect_residuals=True)
  full = run(SkipMask.none(s.cfg.n_layers))
  full_top1 = np.argmax(np.asarray(model_lib.lm_head(s.params, s.cfg, full.hidden[0])), -1)
  for cand in (found[1], found[len(found) // 2], found[-1]):
    out = run(cand.skip)
    cosine = mean_cosine(np.asarray(out.residuals[-1, 0], np.float64),
                         np.asarray(full.residuals[-1, 0], np.float64))
    logits = np.asarray(model_lib.lm_head(s.params, s.cfg, out.hidden[0]), np.float64)
    top1 = np.argmax(logits, -1)
    assert abs(cosine - cand.cosine) < 1e-5, (cand, cosine)
    assert np.mean(top1 == full_top1) == pytest.approx(cand.agreement)
    # Per token, as the draft's confidence exit sees it (speculative._draft: max softmax).
    np.testing.assert_array_equal(cand.agree, top1 == full_top1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(cand.top1_prob, 1 / probs.sum(-1), rtol=1e-4)


def test_exit_agreement_matches_numpy(random_setup):
  s = random_setup
  got = knapsack.exit_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0, s.compiled,
                                attn_len=s.attn_len)
  m, positions = s.np_model, s.p0 + np.arange(R)
  x, tops = m.embed[s.tokens][None], []
  for layer in range(s.cfg.n_layers):
    x = m.mlp(layer, m.attention(layer, x, positions, *s.np_prefix[layer])[0])
    tops.append(m.top1(x[0])[0])
  want = [np.mean(t == tops[-1]) for t in tops]
  np.testing.assert_allclose(got, want)
  assert got[-1] == 1.0 and got.shape == (s.cfg.n_layers,)


def test_mask_agreement_matches_numpy(random_setup):
  """A given skip set's per-token agreement and confidence (any bits, the protected ends too)
  are those of the NumPy forward that skips its sublayers, on the search's R tokens."""
  s = random_setup
  m, positions, n_layers = s.np_model, s.p0 + np.arange(R), s.cfg.n_layers

  def numpy_forward(skip):
    x = m.embed[s.tokens][None]
    for layer in range(n_layers):
      if not skip.skips_attn(layer):
        x = m.attention(layer, x, positions, *s.np_prefix[layer])[0]
      if not skip.skips_mlp(layer):
        x = m.mlp(layer, x)
    return x[0]

  full_top1 = m.top1(numpy_forward(SkipMask.none(n_layers)))[0]
  skips = (SkipMask.none(n_layers), SkipMask.from_layers(n_layers, [1], [2]),
           SkipMask.from_layers(n_layers, [0, 2], [1, n_layers - 1]),
           SkipMask.early_exit(n_layers, 1))
  agreed = []
  for skip in skips:
    agree, prob = knapsack.mask_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0, skip,
                                          s.compiled, attn_len=s.attn_len)
    x = numpy_forward(skip)
    assert agree.shape == prob.shape == (R,)
    np.testing.assert_array_equal(agree, m.top1(x)[0] == full_top1, err_msg=str(skip))
    np.testing.assert_allclose(prob, m.top1_prob(x), rtol=1e-3, atol=1e-5, err_msg=str(skip))
    agreed.append(int(agree.sum()))
  assert agreed[0] == R and min(agreed) < R, agreed  # the full model agrees; a draft does not
  with pytest.raises(SkipMaskError, match="skip mask has"):
    knapsack.mask_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0,
                            SkipMask.none(n_layers + 1), s.compiled, attn_len=s.attn_len)


@pytest.mark.parametrize("round_len", (1, 4, R))
def test_mask_agreement_in_rounds_matches_the_model_round_by_round(random_setup, round_len):
  """In rounds of L, a skip set's agreement and confidence are those of model.forward over the
  L tokens of each round from the full model's cache at the round's start (the draft's view in
  a speculation round), and of the NumPy forward in rounds; L = R is the block again."""
  s = random_setup
  m, n_layers = s.np_model, s.cfg.n_layers
  positions = s.p0 + np.arange(R)

  def numpy_forward(skip):
    x = m.embed[s.tokens][None]
    for layer in range(n_layers):
      if not skip.skips_attn(layer):
        x = numpy_attention_in_rounds(m, layer, x, positions, s.np_full, round_len)
      if not skip.skips_mlp(layer):
        x = m.mlp(layer, x)
    return x[0]

  def model_top1(skip):
    tops = []
    for start in range(0, R, round_len):
      out = model_lib.forward(s.params, s.cfg, jnp.asarray(s.tokens[start:start + round_len])[None],
                              s.cache.rollback(s.p0 + start), skip=skip, attn_len=s.attn_len)
      tops.append(np.argmax(np.asarray(model_lib.lm_head(s.params, s.cfg, out.hidden[0])), -1))
    return np.concatenate(tops)

  full_top1 = m.top1(numpy_forward(SkipMask.none(n_layers)))[0]
  for skip in (SkipMask.none(n_layers), SkipMask.from_layers(n_layers, [1, 3], [2]),
               SkipMask.from_layers(n_layers, [1, 2, 3, 4], [1, 3])):
    agree, prob = knapsack.mask_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0, skip,
                                          s.compiled, attn_len=s.attn_len, round_len=round_len)
    x = numpy_forward(skip)
    np.testing.assert_array_equal(agree, m.top1(x)[0] == full_top1, err_msg=str(skip))
    np.testing.assert_array_equal(agree, model_top1(skip) == full_top1, err_msg=str(skip))
    np.testing.assert_allclose(prob, m.top1_prob(x), rtol=1e-3, atol=1e-5, err_msg=str(skip))
  if round_len == R:
    block, _ = knapsack.mask_agreement(s.stacked, s.cfg, s.cache, s.tokens, s.p0, skip,
                                       s.compiled, attn_len=s.attn_len)
    np.testing.assert_array_equal(agree, block)


@pytest.fixture(scope="module")
def smol(request):
  try:
    model = request.getfixturevalue("smol_jax")
  except pytest.FixtureLookupError:
    model = api.load_model()
  prompt = model.tokenizer.encode(
      "The knapsack problem asks which items to pack so that their total value is as large as "
      "possible while their total weight stays within the capacity of the bag.")
  prompt = np.asarray(prompt[:40], np.int32)
  return make_setup(model.params, model.cfg, prompt, p0=len(prompt) - R, attn_len=64)


# The real model at equal and unequal weights and whole layers; every weight pair of WEIGHT_PAIRS
# runs on the random model above (the DP does not depend on the model): (5, 1) and (1, 3) on
# SmolLM2 as well cost 12 s of NumPy reference on this CPU and reached no other code.
@pytest.mark.parametrize("w_attn,w_mlp,whole_layers", [(1, 1, False), (2, 1, False),
                                                       (1, 1, True)])
def test_smollm2_matches_numpy(smol, w_attn, w_mlp, whole_layers):
  got, _ = compare(smol, w_attn, w_mlp, whole_layers=whole_layers,
                   label="SmolLM2" + (" whole layers" if whole_layers else ""))
  assert got[0].skip.n_skipped == 0 and got[0].agreement == 1.0
  assert len(got) > 1


@pytest.fixture
def compile_events(request):
  """Number of XLA backend compiles so far (conftest's counter when there is one)."""
  try:
    counter = request.getfixturevalue("compile_counter")
    yield lambda: counter.count
    return
  except pytest.FixtureLookupError:
    pass
  events = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield lambda: len(events)
  jax.monitoring.unregister_event_duration_listener(listener)


def test_weights_and_p0_do_not_recompile(random_setup, compile_events):
  s = random_setup
  search = jax.jit(knapsack.knapsack_search,
                   static_argnames=("cfg", "attn_len", "k_max", "tau", "protect_ends"))
  run = lambda p0, wa, wm: jax.block_until_ready(search(
      s.stacked, s.cache, jnp.asarray(s.tokens), jnp.asarray(p0, jnp.int32),
      jnp.asarray(wa, jnp.int32), jnp.asarray(wm, jnp.int32), cfg=s.cfg, attn_len=s.attn_len))
  run(s.p0, 1, 1)
  before = compile_events()
  results = [run(p0, wa, wm) for p0, wa, wm in ((s.p0, 5, 1), (s.p0 - 3, 1, 3), (20, 2, 2))]
  assert compile_events() == before
  assert len({tuple(np.asarray(r.alive)) for r in results}) > 1  # the arguments did matter


def test_compile_search_is_what_search_uses(random_setup, compile_events):
  s = random_setup
  compiled = CompileCache()
  knapsack.compile_search(s.params, s.cfg, compiled, R, attn_len=s.attn_len, tau=0.5,
                          max_weight=knapsack.DEFAULT_MAX_WEIGHT)
  before, hits = compile_events(), compiled.stats.hits
  jax.block_until_ready(knapsack.search(s.params, s.cfg, s.cache, s.tokens, s.p0, 2, 1,
                                        compiled, attn_len=s.attn_len))
  assert compile_events() == before and compiled.stats.hits == hits + 1


def test_bfloat16_search_compares_cosines_in_float32(random_setup):
  """With bfloat16 weights and states the DP still compares and reports cosines in float32 (a
  bf16 cosine near 1 has a grain of 0.004, coarser than the differences the DP decides on), and
  they agree with float64 cosines of model.forward's bf16 residuals replayed with each skip set
  (up to the search's and the forward's own bf16 rounding of the states)."""
  s = random_setup
  params = model_lib.cast_params(s.params, jnp.bfloat16)
  cache = KVCache.create(s.cfg, jnp.bfloat16)
  cache = model_lib.forward(params, s.cfg, jnp.asarray(np.arange(s.p0 + R) % s.cfg.vocab_size)[None],
                            cache, skip=SkipMask.none(s.cfg.n_layers), attn_len=s.attn_len).cache
  tokens = np.arange(s.p0, s.p0 + R) % s.cfg.vocab_size
  result = knapsack.search(knapsack.stack_layers(params), s.cfg, cache, tokens, s.p0, 2, 1,
                           s.compiled, attn_len=s.attn_len)
  assert result.cosine.dtype == jnp.float32 and result.top1_prob.dtype == jnp.float32
  run = lambda skip: np.asarray(model_lib.forward(
      params, s.cfg, jnp.asarray(tokens)[None], cache.rollback(s.p0), skip=skip,
      attn_len=s.attn_len, collect_residuals=True).residuals[-1, 0], np.float64)
  full = run(SkipMask.none(s.cfg.n_layers))
  found = knapsack.candidates(result)
  assert len(found) > 3
  for cand in found:
    assert abs(mean_cosine(run(cand.skip), full) - cand.cosine) < 5e-3, cand
