"""Sampling: the filters against a numpy reference, the accept/resample rule on numpy inputs, and
a statistical test that speculative sampling's output distribution equals the target model's.

The statistical test draws the first three generated tokens of a tiny 16-token-vocabulary
transformers model over 10,000 seeds (vmapped: one compiled program) and compares their joint
histogram with the exact distribution computed from transformers' logits and a numpy filter, by
a chi-square test at alpha = 1e-3: a correct sampler fails it with probability 1e-3 per run
(the seeds are fixed, so a given machine passes or fails deterministically). A deliberately
broken rule (always accept the draft) must fail it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch

import knapspec_jax as ks
from knapspec_jax import api, decoding, sampling, speculative
from knapspec_jax.kv_cache import KVCache

ALPHA = 1e-3  # false-alarm rate of each chi-square test
N_SEEDS = int(os.environ.get("KNAPSPEC_SAMPLING_SEEDS", "10000"))  # more for a long run
N_TOKENS = 3  # joint distribution of the first three generated tokens: 16^3 cells


# ------------------------------------------------------------------------- numpy references

def np_filtered_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float):
  """transformers' warpers in numpy: temperature, TopK (ties kept), TopP (drop the ascending
  cumulative mass <= 1 - top_p, keep at least one), softmax."""
  z = logits.astype(np.float64) / temperature
  if top_k:
    kth = np.sort(z, axis=-1)[..., -top_k, None]
    z = np.where(z < kth, -np.inf, z)
  if top_p < 1.0:
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    order = np.argsort(p, axis=-1, kind="stable")  # ascending
    cum = np.cumsum(np.take_along_axis(p, order, -1), axis=-1)
    remove_sorted = cum <= 1 - top_p
    remove_sorted[..., -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, -1)
    z = np.where(remove, -np.inf, z)
  p = np.exp(z - z.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.8, 20, 0.9), (1.0, 1, 1.0),
    (2.0, 0, 0.05)])
def test_filter_matches_numpy_reference(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(0, 3, size=(6, 50)).astype(np.float32)
  f = ks.SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p).filter
  got = np.asarray(sampling.probs(jnp.asarray(logits), f))
  want = np_filtered_probs(logits, temperature, top_k, top_p)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert ((got > 0) == (want > 0)).all()


def test_draw_is_inverse_cdf_and_skips_zero_probability_tokens():
  dist = np.array([0.0, 0.25, 0.0, 0.5, 0.25, 0.0], np.float32)
  cases = {0.0: 1, 0.2499: 1, 0.25: 3, 0.7499: 3, 0.75: 4, 0.999999: 4}
  for u, token in cases.items():
    assert int(sampling.draw(dist, u)) == token, u


def _rule_output(rule, p, q, n, seed):
  """n rounds of one draft (gamma = 1) from numpy p [2, V], q [1, V]: first emitted tokens."""
  u = jax.random.uniform(jax.random.key(seed), (n, 3))

  def one(u):
    d = sampling.draw(q[0], u[0])
    verdict = rule(p, q, d[None], jnp.int32(1), u[1:])
    return jnp.where(verdict.n_accepted > 0, d, verdict.token), verdict.n_accepted

  return jax.jit(jax.vmap(one))(u)


@pytest.mark.parametrize("rule", ["speculative", "exact_match"])
def test_rule_emits_the_target_distribution(rule):
  """The first emitted token of a round is distributed as p whatever q is (Monte Carlo, 400k
  rounds, total variation <= 0.006: the sampling noise of a correct rule is ~0.002)."""
  rng = np.random.default_rng(1)
  v = 6
  for _ in range(3):
    p = rng.dirichlet(np.ones(v), size=2).astype(np.float32)
    q = rng.dirichlet(np.ones(v) * 0.5, size=1).astype(np.float32)
    tokens, accepted = _rule_output(sampling.RULES[rule], p, q, 400_000, int(rng.integers(1e6)))
    hist = np.bincount(np.asarray(tokens), minlength=v) / len(tokens)
    assert 0.5 * np.abs(hist - p[0]).sum() < 0.006, (rule, hist, p[0])
    # Acceptance: sum min(p, q) for speculative sampling, sum p q for the exact-match rule.
    want = (np.minimum(p[0], q[0]).sum() if rule == "speculative" else (p[0] * q[0]).sum())
    assert abs(float(np.mean(accepted)) - want) < 0.005


def test_speculative_rule_cases():
  p = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)
  q = np.array([[0.5, 0.5, 0.0]], np.float32)
  rule = sampling.speculative_rule
  # p == q: always accepted, then the bonus token comes from p at the next position.
  for u in (0.0, 0.5, 0.999):
    v = rule(p, q, np.array([1]), 1, np.array([u, 0.3], np.float32))
    assert (int(v.n_accepted), int(v.token)) == (1, 2)
  # Disjoint supports: never accepted; the residual is p itself.
  q2 = np.array([[0.0, 0.0, 1.0]], np.float32)
  v = rule(p, q2, np.array([2]), 1, np.array([0.0, 0.7], np.float32))
  assert int(v.n_accepted) == 0 and int(v.token) == 1
  # p(d) / q(d) = 0.5: accepted iff u < 0.5; a rejection resamples from max(0, p - q) = token 0.
  p3 = np.array([[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3]], np.float32)
  q3 = np.array([[0.5, 0.5, 0.0]], np.float32)
  assert int(rule(p3, q3, np.array([1]), 1, np.array([0.49, 0.9], np.float32)).n_accepted) == 1
  v = rule(p3, q3, np.array([1]), 1, np.array([0.51, 0.9], np.float32))
  assert (int(v.n_accepted), int(v.token)) == (0, 0)
  # Rows past n_drafts are never accepted.
  v = rule(np.tile(p3[:1], (3, 1)), np.tile(q3, (2, 1)), np.array([0, 0]), 1,
           np.zeros(3, np.float32))
  assert int(v.n_accepted) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(rule="nope"), "unknown acceptance rule")])
def test_bad_sampling_settings(kwargs, match):
  with pytest.raises(ks.SamplingError, match=match):
    ks.SamplingConfig(**kwargs)


# ------------------------------------------------------------------- the statistical test

@pytest.fixture(scope="module")
def vocab16(tmp_path_factory):
  """A 4-layer transformers Llama with a 16-token vocabulary, weights large enough that the
  draft (two inner layers skipped) and the full model disagree often."""
  import transformers
  cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=4, num_attention_heads=2,
                                 num_key_value_heads=1, max_position_embeddings=32,
                                 tie_word_embeddings=True, rope_theta=10000.0)
  cfg._attn_implementation = "eager"
  torch.manual_seed(3)
  hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
  gen = torch.Generator().manual_seed(4)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      scale = 0.2 if "norm" in name else (0.6 if "embed" in name else 0.35)
      p.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=gen))
  path = tmp_path_factory.mktemp("vocab16")
  hf.save_pretrained(path, safe_serialization=True)
  return hf, api.load_model(str(path), use_cache=False)


PROMPT = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int32)


def exact_joint(hf, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
  """P(t0, t1, t2) [16, 16, 16] from transformers' logits and the numpy filter."""
  v = hf.config.vocab_size
  joint = np.ones((1,))
  for depth in range(N_TOKENS):
    prefixes = np.array(list(itertools.product(range(v), repeat=depth)), np.int64).reshape(
        v ** depth, depth)
    seqs = np.concatenate([np.tile(PROMPT, (len(prefixes), 1)), prefixes], axis=1)
    with torch.no_grad():
      logits = hf(torch.as_tensor(seqs)).logits[:, -1].float().numpy()
    cond = np_filtered_probs(logits, temperature, top_k, top_p)  # [v^depth, v]
    joint = (joint.reshape(-1, 1) * cond).reshape(-1)
  return joint.reshape((v,) * N_TOKENS)


def sample_first_tokens(model, config: ks.SamplingConfig, *, skip=None, gamma=1,
                        threshold=1e-3, n_seeds=N_SEEDS, chunk=10_000):
  """The first N_TOKENS tokens of n_seeds runs (seeds 0..n-1), AR sampling when skip is None,
  else speculative sampling with this draft; also (accepted, drafted) summed over the runs."""
  cfg = model.cfg
  cache = KVCache.create(cfg)
  logits, cache = decoding.prefill(model.params, cfg, PROMPT, cache, model.compiled)
  attn_len = decoding.attn_bucket(len(PROMPT) + N_TOKENS + gamma, cache.capacity)

  def one(seed):
    state = decoding.init_state(cache, logits, N_TOKENS, (),
                                dataclasses.replace(config, seed=seed))
    if skip is None:
      state = decoding.ar_segment(model.params, state, cfg=cfg, attn_len=attn_len,
                                  sampling=config.filter)
      counts = jnp.zeros((2,), jnp.int32)
    else:
      state, c = speculative.spec_segment(
          model.params, state, speculative.SpecCounters.zeros(), jnp.int32(100),
          jnp.float32(threshold), cfg=cfg, skip=skip, gamma=gamma, attn_len=attn_len,
          sampling=config.filter)
      counts = jnp.stack([c.accepted, c.drafted])
    return state.out[:N_TOKENS], state.n_out, counts

  run = jax.jit(jax.vmap(one))
  outs, n_outs, counts = zip(*(run(jnp.arange(s, min(s + chunk, n_seeds)))
                               for s in range(0, n_seeds, chunk)))
  n_out = np.concatenate(n_outs)
  assert (n_out == N_TOKENS).all()
  return np.concatenate(outs), np.concatenate(counts).sum(0)


def chi_square_pvalue(tokens: np.ndarray, joint: np.ndarray) -> float:
  """Pearson chi-square of the sampled joint histogram against the exact distribution; cells
  with an expected count under 5 are pooled into one."""
  v = joint.shape[0]
  index = np.ravel_multi_index(tokens.T, joint.shape)
  observed = np.bincount(index, minlength=v ** N_TOKENS).astype(np.float64)
  expected = joint.reshape(-1) * len(tokens)
  big = expected >= 5
  obs = np.append(observed[big], observed[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  keep = exp > 0
  stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
  return float(scipy.stats.chi2.sf(stat, keep.sum() - 1))


DRAFT = ks.SkipMask.from_layers(4, attn=[1, 2], mlp=[1, 2])


@pytest.fixture(scope="module")
def exact(vocab16):
  hf, _ = vocab16
  return functools.lru_cache(None)(lambda *key: exact_joint(hf, *key))


@pytest.mark.parametrize("filt, gamma, rule", [
    ((1.0, 0, 1.0), None, "speculative"),  # plain AR sampling: validates the harness
    ((1.0, 0, 1.0), 1, "speculative"),  # accept, resample and bonus tokens all in 3 tokens
    ((0.8, 8, 0.9), 3, "speculative"),  # filters applied identically to draft and target
])
def test_sampled_distribution_equals_the_target(vocab16, exact, filt, gamma, rule):
  _, model = vocab16
  config = ks.SamplingConfig(*filt, rule=rule)
  joint = exact(*filt)
  tokens, (accepted, drafted) = sample_first_tokens(
      model, config, skip=None if gamma is None else DRAFT, gamma=gamma or 1)
  pvalue = chi_square_pvalue(tokens, joint)
  print(f"\n[sampling] filter {filt} gamma {gamma} rule {rule}: chi-square p = {pvalue:.3g}, "
        f"accepted {accepted}/{drafted}")
  assert pvalue > ALPHA
  if gamma is not None:
    assert drafted >= N_SEEDS and 0 < accepted < drafted  # it drafted, and rejections happened


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_confidence_exit_keeps_sampling_exact(vocab16, exact, threshold):
  """The token that ends a draft on low confidence is proposed with its q and verified; the
  output distribution is still the target's. At threshold 1.0 every round drafts exactly one
  such token (nothing reaches the verifier if the exit drops it)."""
  _, model = vocab16
  config = ks.SamplingConfig(0.8, 8, 0.9)
  tokens, (accepted, drafted) = sample_first_tokens(model, config, skip=DRAFT, gamma=3,
                                                    threshold=threshold)
  pvalue = chi_square_pvalue(tokens, exact(0.8, 8, 0.9))
  print(f"\n[sampling] threshold {threshold}: chi-square p = {pvalue:.3g}, "
        f"accepted {accepted}/{drafted}")
  assert pvalue > ALPHA
  assert drafted >= N_SEEDS and 0 < accepted < drafted


def test_broken_rule_is_detected(vocab16, exact, monkeypatch):
  """Accepting every draft emits the draft's distribution: the same test must reject it."""
  def always_accept(p, q, drafts, n_drafts, u):
    return sampling.Verdict(n_drafts, sampling.draw(p[n_drafts], u[-1]))

  monkeypatch.setitem(sampling.RULES, "always_accept", always_accept)
  _, model = vocab16
  tokens, _ = sample_first_tokens(model, ks.SamplingConfig(rule="always_accept"), skip=DRAFT)
  pvalue = chi_square_pvalue(tokens, exact(1.0, 0, 1.0))
  print(f"\n[sampling] always-accept rule: chi-square p = {pvalue:.3g}")
  assert pvalue < ALPHA


def test_generate_with_sampling(vocab16):
  """The public path: seeds reproduce, differ from each other, and every method samples."""
  _, model = vocab16
  model.profile = ks.LatencyProfile(device="synthetic", model="t", dtype="float32",
                                    n_layers=4, c0=1e-4, a0=1e-3, a1=0.0, m=1e-3, v0=0.0, v1=0.0)
  runs = {}
  for seed in (0, 1):
    s = ks.SamplingConfig(seed=seed)
    ar = ks.generate(model, PROMPT, 20, ignore_eos=True, sampling=s)
    fixed = ks.generate(model, PROMPT, 20, method="fixed", ignore_eos=True, sampling=s,
                        config=ks.FixedConfig(skip=DRAFT, gamma=3, threshold=1e-3))
    assert ar.new_tokens == fixed.new_tokens == 20
    assert fixed.stats["speculation_steps"] > 0
    runs[seed] = (ar.output_ids, fixed.output_ids)
    again = ks.generate(model, PROMPT, 20, ignore_eos=True, sampling=s)
    assert again.output_ids == ar.output_ids
  assert runs[0][0] != runs[1][0] and runs[0][1] != runs[1][1]
  with pytest.raises(ks.SamplingError, match="SamplingConfig"):
    ks.generate(model, PROMPT, 4, sampling={"temperature": 1.0})
