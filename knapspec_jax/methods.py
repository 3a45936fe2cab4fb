"""Every decoding method, as the (decode, warmup) pair of functions api.generate runs: the table
METHODS, from which api builds its registry (api.register_method adds more).

  ar        plain decoding, the baseline (ar_decode, ar_warmup; every speculative method warms
            AR's programs too, since each decodes plainly where it declines to draft).

The speculative ones, each a policy for `controller.run`:

  knapspec  the paper's method: knapsack DP over attention/MLP sublayers with latency weights,
            then the TPT grid search over (candidate, gamma); declines when no draft pays.
  clasp     CLaSp: whole-layer skipping, DP on the last token, a fixed number M of layers.
  del       DEL: early exit at layer l with draft length d maximizing Tokens-per-Layer.
  fixed     a fixed skip set and draft length (default: every other inner layer's attention
            and MLP), the simplest self-speculative baseline.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from knapspec_jax import (compile_cache, controller, decoding, knapsack, latency, selection,
                          speculative)
from knapspec_jax.config import is_int, is_real
from knapspec_jax.decoding import DecodeState, attn_bucket, bucket_start
from knapspec_jax.engine import Model, abstract_state
from knapspec_jax.kv_cache import SLACK, KVCache
from knapspec_jax.selection import Candidate, Decision
from knapspec_jax.skip_mask import SkipMask


class MethodError(ValueError):
  """A method or method option out of range (unknown method, gamma, threshold, interval, skip
  set...): raised here for options, by api.generate for an unknown method."""


# The shortest drafting window KnapSpecPolicy.observe judges a kept draft by.
JUDGE_ROUNDS = 4


def _check_int(name: str, value, low: int, high: int | None = None):
  """An integer option (not a bool, not a float) in low..high, named as the config's field."""
  if not is_int(value):
    raise MethodError(f"{name} must be an integer, got {value!r}")
  if value < low or (high is not None and value > high):
    bound = f"in {low}..{high}" if high is not None else f">= {low}"
    raise MethodError(f"{name} must be {bound}, got {value}")


def _check_real(name: str, value, low: float, high: float, low_open: bool, high_open: bool):
  """A number option in the interval low..high, open or closed at either end."""
  if not is_real(value):
    raise MethodError(f"{name} must be a number, got {value!r}")
  ok = ((value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  if not ok:  # nan fails every comparison
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise MethodError(f"{name} must be in {interval}, got {value}")


def _check_bool(name: str, value, none_ok: bool = False):
  if not (isinstance(value, bool) or (none_ok and value is None)):
    raise MethodError(f"{name} must be True or False{' or None' if none_ok else ''}, "
                      f"got {value!r}")


def _check_common(gamma: int, threshold: float, interval: int, gamma_name: str = "gamma"):
  _check_int(gamma_name, gamma, 1, speculative.MAX_GAMMA)
  _check_real("threshold", threshold, 0.0, 1.0, low_open=True, high_open=False)
  _check_int("interval", interval, 1)


def _check_ar_options(options: dict) -> int:
  """AR's one option, width (decoding.ar_segment): positions per step, 1..SLACK (a verify's
  width, for bf16 agreement); None, the default: ModelConfig.step_rows."""
  unknown = sorted(set(options) - {"width"})
  if unknown:
    raise MethodError(f"method 'ar' takes no options but width, got {unknown}")
  width = options.get("width")
  if width is not None and (not isinstance(width, int) or isinstance(width, bool)
                            or not 1 <= width <= SLACK):
    raise MethodError(f"AR width must be an integer in 1..{SLACK}, got {width!r}")
  return width


def ar_decode(model: Model, state: DecodeState, prompt_ids, sampling=None, **options):
  """The "ar" method's decode: plain decoding to the end (the baseline every method is timed
  against)."""
  width = _check_ar_options(options)
  context, n_out = (int(x) for x in jax.device_get((state.cache.length, state.n_out)))
  start = time.perf_counter()
  state = decoding.run_ar(model.params, model.cfg, state, model.compiled, width=width,
                          sampling=sampling)
  if sampling is None:  # the speed a kept draft at this width must beat (Model.ar_speeds)
    tokens = int(jax.device_get(state.n_out)) - n_out
    model.note_ar_speed(context, state.cache.capacity, tokens, time.perf_counter() - start,
                        width)
  return state, {}


def ar_warmup(model: Model, n_prompt: int, max_new_tokens: int, sampling=None, **options):
  """Compiles AR's segment program for each attention bucket the run visits; every
  speculative method calls it too, since each decodes plainly where it declines to draft."""
  width = _check_ar_options(options)
  state = abstract_state(model)
  for attn_len in decoding.ar_buckets(model.cfg, state.cache.capacity, n_prompt, max_new_tokens,
                                      width):
    model.compiled.get(decoding.ARSegmentStatics(model.cfg, attn_len, width=width,
                                                 sampling=sampling), (model.params, state))


@dataclasses.dataclass(frozen=True)
class KnapSpecConfig:
  """KnapSpec's settings (defaults follow the paper and the official code where it is right).

  interval: speculation rounds between re-optimizations (official: 64).
  n_ref: confirmed tokens the search scores drafts on (the official code collects ~5 verify
    steps' accepted tokens; here the last n_ref confirmed tokens, the same states).
  gamma_max: largest draft length in the TPT grid search (paper: D = 10).
  threshold: draft stops when its top-1 probability falls below this (official: 0.7).
  tau: DP states whose mean cosine to the full model falls below this are pruned (0.5).
  max_weight: cap on an item's integer latency weight (official: 5).
  margin: a draft must beat AR's predicted tokens/s by this fraction to be used. Kept at 3%:
    the profile's step and verify fits err by a median 4-8% (SmolLM2: CPU 6.1% / 5.2%, H200
    4.3% / 8.3%, profiles/*.json fit_errors), so a thinner margin would draft on noise.
  search_budget: a search is always allowed when it costs at most this fraction of the decode
    time AR would need for the remaining tokens (the cheap case; 2% keeps a declining run
    within 0.97x AR). Alone it was too strict where searches are dear against a short
    generation: Qwen2.5-Coder-1.5B on the H200 pays 27-92 ms a search against 2.1-2.4 ms per AR
    token, 5-15% of a 256-token generation, so it never searched (../shared/MEASURED.md). Hence
    the two rules below, which budget a search against what it can win.
  gain_share: where a search already ran at this attention bucket (this process, this model),
    a new one is allowed when it costs at most this share of the savings that search predicted
    for the remaining tokens: gain_share * (1 - ar_tpt / best_tpt) * AR time left. A search
    whose best draft lost to AR records no savings, so on SmolLM2, where no draft ever paid
    (CPU and GPU, README), the next searches there fall back to search_budget.
  explore_budget: at a bucket where no search ran yet, the generation's first search is allowed
    up to this fraction of the AR time left (once per generation; the outcome is recorded for
    gain_share, and a draft it chooses is kept: `keep`). This is the price of finding out,
    paid once per bucket in a process whose first search there finds no draft worth keeping.
    25%: on the H200 a Qwen2.5-Coder-1.5B search costs 30-58 ms up to 8K positions (its
    profile) against 0.38-0.43 s of AR time for 240 tokens with the two-row one-token step
    (BENCHMARKS.md 10.5), so at 5% (until session 6) and at 20% it never searched at 256 new
    tokens. On SmolLM2 on this 2-vCPU CPU a search costs 0.73 s at 256 positions against 16.8 ms
    per AR token, so it explores only in generations of >= 174 tokens (the CPU configs, 96-128
    tokens, never do); where it explores and finds no paying draft, the bucket records a saving
    of 0 and later generations do not search there again. A benchmark's untimed warm-up run of
    each prompt pays it, except where the warm-up explored its first bucket and a timed run that
    did not search there (its record says no draft pays) crosses into a bucket no search has
    explored: that run explores it (a plain stretch stops there since session 38, as a drafting
    window's end always could; `plain_tokens`).
  decoupled: attention and MLP are separate items (False: whole layers, each one item of weight
    w_attn + w_mlp in the same DP, as CLaSp's items; an ablation).
  latency_weights: item weights from the latency profile (False: uniform weights, i.e. DEL's
    Tokens-per-Layer view, an ablation).
  protect_ends: never skip the first and last layer (official).
  background_compile: compile a new skip set's program in the background while decoding
    plainly: True or "thread" in a thread of this process, "process" in the compile worker
    (compile_cache.CompileWorker), loaded from the executable store when ready (default: see
    controller.background_compile_default). When compiling blocks, the selection charges its
    cost against the predicted gain.
  charge_compile: (only where a new skip set compiles in the caller's thread: on a CPU, or with
    background_compile=False) False ignores compile cost in the selection (an experiment's
    setting, to measure what the predicted drafts deliver; the compiles then count in decode
    time). Only
    a (skip set, draft length) whose segment program is not in the model's compile cache is
    charged: one compiled by an earlier generation or a warm-up run costs nothing to use again
    (the check was per generation before, so every generation paid the full charge again).
  compile_horizon: tokens whose predicted savings must repay a new skip set's compile (the
    profile's segment_compile_s: 4.0 s on the H200, 2.1 s on the CPU). 0: this generation's
    next min(remaining, 4 * interval) tokens; at 2.1-2.4 ms per Qwen-1.5B token on the H200
    those 256 tokens save at most about 0.3 s, so no set was ever compiled. A process that
    reuses its programs across generations (a server, a benchmark with warm-up runs) may set
    the tokens it expects to decode with them, e.g. 100_000.
  search_chunk: budget states per batched sublayer call in the search (default:
    knapsack.default_chunk).
  keep: keep the draft a search chose at an attention bucket, across windows and generations
    (Model.kept_drafts), and decode with it without searching again until one of its windows
    measures slower than AR's predicted speed; then it is dropped and the next generation may
    search there again. A draft predicted to pay whose program is not compiled, and whose
    compile this generation cannot repay (compile_horizon), is kept too: this generation decodes
    plainly, and the next generation's warm-up compiles it (outside the timed decode, reported
    as compile_s), as the fixed set's programs compile at warm-up. False: the paper's schedule,
    a search every `interval` rounds, and only compiled or repaid drafts. Measured
    on Qwen2.5-Coder-1.5B on the H200 (BENCHMARKS.md 10.3): with a search every window, the
    searches took 14.5% of the decode time and cost what the drafts won (0.88-1.07x AR, while
    the drafting alone ran at 1.06-1.25x).
  trial_rounds: a draft no window has measured yet (a kept draft's first use in this process,
    a search's new choice) decodes this many speculation rounds first, instead of `interval`;
    that window's rounds, timed by the profile, decide whether it is kept (faster than AR's
    predicted speed) or dropped (`observe`: a short window's wall time carries a fixed cost
    that made every trial on the H200 look slower than AR). 0: the full interval.
    Measured on the H200 (BENCHMARKS.md 10.13): on a 2K document the first timed generation
    after warm-up decoded a 64-round window with a kept draft that measured slower than AR,
    and ran at 367 tok/s against AR's 551 before the draft was dropped; the next two ran
    plainly at 543 and 558. At least JUDGE_ROUNDS (observe judges no shorter window).
  exit_model: score each candidate's round under the confidence exit (selection.ExitRates:
    the search's per-token agreement and top-1 probabilities at `threshold`), as the draft runs
    it. False: the paper's round of gamma drafts accepted at rate alpha, which ignores that the
    exit stops a round at its first unconfident token. On the H200 (Qwen2.5-Coder-1.5B, 2K
    document, 1024 tokens; BENCHMARKS.md 10.15) CLaSp's draft under the exit ran its rounds at
    1.11x AR while KnapSpec, without this model, predicted at most a 0-2% saving and declined.
    On by default since session 14, with try_below (BENCHMARKS.md 10.18): KnapSpec then drafted
    on every Qwen document at 1.08-1.12x AR (H200) and still declined on SmolLM2 (CPU; its best
    draft predicted at 0.89x AR). On SmolLM2 on the H200 (BENCHMARKS.md 10.26) it drafted on 2
    of 7 Spec-Bench prompts, predicted at 1.01x and 1.04x, and lost (see confirm_margin).
  try_below: with trials on (keep, trial_rounds > 0), a draft predicted at least (1 -
    try_below) x AR's tokens/s is tried instead of declined: its trial window judges it by its
    measured rounds (observe), and a full window then by its wall time. 0: a draft must beat AR
    by `margin`. The prediction's acceptance comes from the 16 tokens before the search, which
    on Qwen2.5-Coder-1.5B agree less than the tokens after it: CLaSp's sets were predicted at
    0.93-1.07x AR where their rounds ran 1.03-1.17x (BENCHMARKS.md 10.15, 10.16), and on the
    H200 at 8K and 16K KnapSpec's best drafts were predicted at 0.93x and 0.98x where CLaSp's
    rounds ran 1.01-1.21x. A trial that loses costs its 8 rounds. On by default since session
    14 (see exit_model): at 28K the H200 run tried a draft predicted at 1.01x AR, under the 3%
    margin, whose full windows then ran 1.05-1.16x.
  judge_windows: full windows (after the trial) a kept draft decodes at a bucket before
    `observe` may drop it; it is then judged by all of them together (their tokens over their
    seconds) against AR's measured speed, and dropped unless faster by keep_margin. A draft's
    acceptance varies along the text: on the H200 (Qwen2.5-Coder-1.5B, 2K document,
    BENCHMARKS.md 10.17) the 2K draft's first full window (contexts 2017-2167) ran 2.3-2.5
    tokens per round and 546 tok/s against AR's 575, and was dropped, while the same draft ran
    2.95 tokens per round and 1.22x AR in 64-round windows over contexts 2000-3700. 1: each
    window alone decides (until session 13). A losing draft costs at most judge_windows - 1
    more windows per bucket.
  keep_margin: the judged windows must beat AR's measured tokens/s by this fraction, or the
    draft is dropped. A draft at AR's speed is a loss: its windows end where the plain tail
    begins, and every window pays a fixed 4-5 ms on the H200 (BENCHMARKS.md 10.17). On
    Qwen2.5-Coder-1.5B's Spec-Bench prompts (H200, 256 tokens, BENCHMARKS.md 10.18) a draft
    kept at 585 tok/s against AR's 583 decoded specbench-91 at 0.964x AR (its second window at
    556-561, a 22-token plain tail at 540), while on the documents the kept drafts' judged
    windows ran 1.06-1.13x AR at every bucket but one (1.01x; experiments/judged_windows.py).
    0: parity keeps a draft (until session 14).
  confirm_margin: a draft that passed its trial is judged once more when its first full window
    ends: that window's rounds and the trial's together, timed by the profile as the trial is,
    must run at least (1 - confirm_margin) x the profile's AR, or the draft is dropped then,
    not after judge_windows windows. Eight rounds are a small sample: on SmolLM2 (H200,
    Spec-Bench, 128 new tokens, BENCHMARKS.md 10.26) two trials accepted 20 of 20 and 10 of 14
    drafted tokens and the full windows after them 57 of 72 and 38 of 75; both drafts ran
    0.93-0.95x AR, and while judge_windows waited for their second window they decoded 2 of 3
    timed generations (0.929-0.936x AR paired). Replayed over every trial followed by a full
    window in the H200 records (experiments/trial_confirmation_replay.py), 0.03 drops those
    two (0.94x and 0.92x AR at the profile's costs) and none of the 22 Qwen pairs: those
    nearest the line ran 0.975-0.999x, and the one among them whose later windows beat AR by
    8-18% (28K, 0.995x) is kept. 1: off (until session 22). 0.02 since session 39: on an H100
    (SmolLM2, Spec-Bench b, BENCHMARKS.md 10.43) specbench-141's draft (4 attention sublayers,
    gamma 10, predicted 1.02x) confirmed at 0.974x of the profile's AR, its full windows then ran
    0.92-0.94x AR measured, and the prompt ran 0.958-0.966x AR paired (0.983x in session 37, the
    same decisions). Replayed over every committed record, 0.02 drops it (four records) and the
    one Qwen pair at 0.975x (28K, whose full windows then ran 0.96x AR) and keeps every pair at
    0.989x or more; the nearest winner (28K, 0.995x) keeps a 1.5% margin.
  search_new_buckets: (keep) a draft kept at a bucket below is borrowed at a new bucket only
    after one search there (within explore_budget) found nothing predicted faster than it by
    `margin` (against_borrowed); a draft that is, is kept for the bucket (compiled by the next
    warm-up), and this generation decodes plainly up to a kept draft ahead; a bucket's own
    draft that loses hands the bucket back to the draft below. False: a kept draft serves every
    bucket above it unsearched. On the H200 (Qwen2.5-Coder-1.5B, 1024 new tokens) without it
    the draft chosen at 2K (8 + 8 sublayers, gamma 2) served the 2K-28K documents at 1.128 /
    1.108 / 1.108 / 1.146x AR (BENCHMARKS.md 10.19); with it the 3K bucket's search found 9 +
    10 at gamma 9, which served them at 1.167 / 1.083 / 1.090 / 1.287x (10.20), while the
    searches at 8K-28K put their own best under the borrowed draft. On by default since
    session 18: on the Spec-Bench subset (13 prompts, 256 new tokens, H200, BENCHMARKS.md
    10.22) it ran 0.995-1.196x AR paired, 1.001x median, as without it. On SmolLM2 it never
    acts (no draft is kept).
  search_after: generated tokens a generation decodes plainly before its first search beyond
    the n_ref it scores on, so that its reference tokens lie this far into the generation. 0:
    the search runs on the first n_ref generated tokens. On Qwen2.5-Coder-1.5B (CPU replay of
    the 8K document with the H200's costs, BENCHMARKS.md 10.21) the search on the first 16
    tokens put its best draft at 0.98x AR and three drafts 0.06-0.34 under what their next 128
    tokens ran; the same search 112 tokens later found one predicted at 1.18x, whose next 128
    tokens ran 0.97x. Measured on the H200 in session 25 (BENCHMARKS.md 10.29, 1024 new
    tokens): at 112 the 2K search chose 10 + 12 sublayers at gamma 3 (predicted 1.18x AR) and
    KnapSpec ran the 2K / 16K / 28K documents at 1.062 / 1.039 / 1.240x AR paired, against
    1.124 / 1.092 / 1.134x with 0 in the same session: each generation decodes 127 tokens
    plainly before its search, and the draft it chose served 16K worse. Off by default. On an
    H100 in session 38 (BENCHMARKS.md 10.42, the 16K and 28K documents alone, one process
    each) 112 ran them at 1.107 / 1.372x against 1.029 / 1.366x with 0: every search on a
    document's first 16 answer tokens in the committed records predicted 0.93-1.10x, every one
    further in on the same documents 1.11-1.57x. Since session 38 the collection stops at the end
    of the bucket the generation began in (`to_collect`): session 25's 2K prompt (1996 tokens)
    searched at 2123, in the next bucket, and every timed run collected its first 127 tokens
    plainly again. Measured with that beside 0 on one H100 in session 39 (BENCHMARKS.md 10.43):
    the documents at 1.272 / 1.189 / 1.508x against 1.282 / 1.211 / 1.432x, Qwen's Spec-Bench
    median 1.004x against 0.999x; off, as the default's later searches (a new bucket's first,
    after a decline) find the late drafts too.
  bucket_windows: (keep) a kept draft confirmed at its bucket (judge_windows full windows there,
    judged faster than AR) decodes in one window to the end of the bucket, instead of
    `interval` rounds at a time (a window that starts within a round's span of its bucket's
    end runs in the next bucket: to that one's end where the same draft is confirmed there
    too). Nothing is decided again inside a bucket once its draft is confirmed (a new bucket
    may search or borrow), and every window costs the H200's host about 2.0 ms between
    windows (309 timed KnapSpec runs' records on Qwen2.5-Coder-1.5B, BENCHMARKS.md 10.35) and
    a call's 1.4 ms (the profile's call_s): at 16K, 1.1% of a 64-round window (about 0.31 s).
    The window is still judged as each window is (`observe`). On an H100 (16K document, a pinned
    draft, BENCHMARKS.md 10.37) one more window cost 8 ms, and bucket windows ran 1.0133x
    interval windows paired (2 windows against 5); on another H100 in session 34 1.0137x
    (10.38). On by default since session 34 (BENCHMARKS.md 10.38, an H100): on SmolLM2's 13
    Spec-Bench prompts every KnapSpec decision was the same with it as without it (no draft is
    confirmed there), and on Qwen2.5-Coder-1.5B's documents two processes with it ran 1.270-1.274
    / 1.222-1.226 / 1.239-1.241x AR paired at 2K / 16K / 28K against 1.286 / 1.206 / 1.232x
    without it (session 33: 1.28-1.29 / 1.21-1.22 / 1.44x against 1.29 / 1.19 / 1.43x). The
    risk it takes: a confirmed draft that turns slow runs to its bucket's end before `observe`
    can drop it.
  stand_in_above: where KnapSpec declines (no search affordable here, and no draft kept here or
    below), the draft kept at the nearest bucket above stands in (`KnapSpecPolicy.stand_in`)
    where the warm-up compiled it for this context, the profile predicts it here faster than
    AR by `margin`, and no window of it has measured it slower than AR there by keep_margin. It
    first runs a trial (trial_rounds) judged by its rounds at the profile's costs, then windows
    judged each alone by the clock; one that loses ends its stand-ins in this generation.
    `kept` borrows only from below: on an H100 (the 16K document decoded alone, BENCHMARKS.md
    10.43) the 16K bucket's weak draft lost, a search at 16385 found 10 + 10 sublayers at gamma
    10 (predicted 1.41x) whose windows then ran 581-690 tok/s against AR's 494, and each later
    run decoded its first 409 tokens, below that bucket, plainly at 496 tok/s. Measured on
    SmolLM2's 13 Spec-Bench prompts on an H100 (BENCHMARKS.md 10.44): the extraction prompt,
    whose 512 bucket keeps a draft, ran 1.082x and 1.069x AR with it against 1.034x and 0.977x
    without; the other prompts keep nothing above and declined either way. Since session 50
    it also stands in over a bucket's own draft whose full windows there measured a smaller
    ratio to AR than the draft above's (measured at its bucket, else predicted here) by
    `margin`: on an H100 (the 16K document alone, BENCHMARKS.md 10.53) the draft kept at 16K
    ran its first three full windows 1.03x AR measured there (a fourth dropped it), the one
    kept at 17K 1.24x. On by default since session 52 (BENCHMARKS.md 10.56, an H100, code at
    6dcd163, each arm its own process on one machine): Qwen's 16K document alone ran 1.172x and
    1.189x AR paired with it against 1.115x and 1.127x without (both orders; its timed runs
    drafted their first 409 tokens with the 17K bucket's draft, and kept AR's text), 28K alone
    1.129x against 1.123x, 2K and 8K in one process 1.308x / 1.195x against 1.313x / 1.192x;
    SmolLM2's Spec-Bench the same decisions on 6 of 7 prompts (specbench_b) and the extraction
    prompt 1.097x.
  bucket_end_alone: (bucket_windows) a window a confirmed draft decoded to its bucket's end,
    of at least half of `interval` rounds, is this text's whole stretch of the bucket: it is
    judged alone too (against AR's measured speed, by keep_margin), not only with the bucket's
    earlier windows, and one that loses drops the draft as the judged windows do. Under the
    together-judgement a draft that won on some texts kept decoding another it lost on: on an
    H100 (SmolLM2's Spec-Bench, session 52, BENCHMARKS.md 10.56) a draft of 4 attention
    sublayers at gamma 10, confirmed on specbench-141 and 151 at 1190-1203 tok/s, ran each of
    specbench-161's runs at 1085-1090 against AR's 1127 (0.937x paired) while the bucket's
    windows together stayed at 1158. A shorter window pays the window's fixed host cost
    (about 2 ms on the H200, 10.35) over too few rounds to be judged alone. Over every committed
    record (65 files) no long document's window to a bucket's end lost alone (0 of 328,
    experiments/bucket_end_windows.py).
  search_round_len: how the search (and a borrowed draft's scoring on its tokens) runs a draft
    over its n_ref reference tokens. 0: as one block, each token's draft seeing the draft's own
    keys and values at every earlier reference token, as if it had drafted all n_ref in one
    round. L (dividing n_ref): in rounds of L, each round over the full model's cache up to its
    first token, as a speculation round's drafts see the verified tokens (1: each token alone).
    On the CPU (Qwen2.5-Coder-1.5B, float32, the 2K document, two drafts KnapSpec chose on an
    H100; experiments/reference_scoring.py, BENCHMARKS.md 10.46) the block's statistics put the
    drafts' speedup at the H100 profile's costs 0.13-0.21x under what their rounds then made
    along the answer (the draft's agreement falls from 0.81 at a block's first token to 0.35
    at its 16th), rounds of 1 within 0.03-0.08x and rounds of 2 within 0.04-0.06x (SmolLM2:
    the block 0.08-0.12x under, rounds of 1 within 0.01x on average). Yet as the search's score
    rounds lost on an H100 (BENCHMARKS.md 10.47, Qwen's documents, 1024 new tokens): 1.079x
    (rounds of 2) against the block's 1.271x at 16K on one text, 1.236x (rounds of 1) against
    1.258x at 28K; a round's later drafts are credited with its first draft's agreement, so the
    search moved to gamma 6-10 drafts that accepted 0.67-0.85 of their tokens. 0: the block.
  """

  interval: int = 64
  n_ref: int = 16
  gamma_max: int = 10
  threshold: float = 0.7
  tau: float = knapsack.DEFAULT_TAU
  max_weight: int = knapsack.DEFAULT_MAX_WEIGHT
  margin: float = 0.03
  search_budget: float = 0.02
  gain_share: float = 0.5
  explore_budget: float = 0.25
  decoupled: bool = True
  latency_weights: bool = True
  protect_ends: bool = True
  background_compile: bool | str | None = None
  search_chunk: int | None = None
  charge_compile: bool = True
  compile_horizon: int = 0
  keep: bool = True
  trial_rounds: int = 8
  exit_model: bool = True
  try_below: float = 0.1
  judge_windows: int = 2
  keep_margin: float = 0.02
  confirm_margin: float = 0.02
  search_new_buckets: bool = True
  search_after: int = 0
  bucket_windows: bool = True
  stand_in_above: bool = True
  bucket_end_alone: bool = True
  search_round_len: int = 0

  @property
  def bucket_end_rounds(self) -> int:
    """bucket_end_alone: the fewest rounds a window to its bucket's end is judged alone on."""
    return self.interval // 2

  def __post_init__(self):
    _check_common(self.gamma_max, self.threshold, self.interval, "gamma_max")
    _check_int("trial_rounds", self.trial_rounds, 0)
    if 0 < self.trial_rounds < JUDGE_ROUNDS:
      raise MethodError(f"trial_rounds must be 0 or >= {JUDGE_ROUNDS} (a shorter window is not "
                        f"judged), got {self.trial_rounds}")
    _check_int("judge_windows", self.judge_windows, 1)
    _check_int("n_ref", self.n_ref, 1)
    _check_real("tau", self.tau, 0.0, 1.0, low_open=True, high_open=True)
    _check_int("max_weight", self.max_weight, 1)
    _check_real("margin", self.margin, -1.0, math.inf, low_open=True, high_open=True)
    _check_real("try_below", self.try_below, 0.0, 1.0, low_open=False, high_open=True)
    _check_real("keep_margin", self.keep_margin, 0.0, 1.0, low_open=False, high_open=True)
    _check_real("confirm_margin", self.confirm_margin, 0.0, 1.0, low_open=False,
                high_open=False)
    for name in ("search_budget", "gain_share", "explore_budget"):
      _check_real(name, getattr(self, name), 0.0, math.inf, low_open=False, high_open=True)
    _check_int("compile_horizon", self.compile_horizon, 0)
    _check_int("search_after", self.search_after, 0)
    _check_int("search_round_len", self.search_round_len, 0)
    try:
      knapsack.round_starts(self.n_ref, self.search_round_len)
    except ValueError as e:
      raise MethodError(f"search_round_len (n_ref={self.n_ref}): {e}") from None
    for name in ("decoupled", "latency_weights", "protect_ends", "charge_compile", "keep",
                 "exit_model", "search_new_buckets", "bucket_windows", "stand_in_above",
                 "bucket_end_alone"):
      _check_bool(name, getattr(self, name))
    try:  # the values decoding accepts (1 and 0 are not True and False there)
      compile_cache.background_mode(self.background_compile)
    except ValueError:
      raise MethodError(f"background_compile must be None, False, True (a thread) or one of "
                        f"{compile_cache.BACKGROUND_MODES}, got {self.background_compile!r}"
                        ) from None
    if self.search_chunk is not None:
      _check_int("search_chunk", self.search_chunk, 1)


@dataclasses.dataclass(frozen=True)
class KeptDraft:
  """A draft KnapSpec chose at an attention bucket and keeps (KnapSpecConfig.keep)."""

  skip: SkipMask
  gamma: int
  alpha: float  # the search's acceptance estimate
  context: int  # where it was chosen (a search's context; kept as its windows are judged)
  measured_tpt: float | None = None  # tokens/s of its last measured window, None: not yet
  exit: selection.ExitRates | None = None  # the search's round under the confidence exit
  # Its full windows at this bucket so far (not the trial): what observe judges it by.
  windows: int = 0
  tokens: int = 0
  seconds: float = 0.0
  # Its trial window's tokens and the profile's seconds for its rounds, until its first full
  # window is judged with them (KnapSpecConfig.confirm_margin); 0: no trial to confirm.
  trial_tokens: int = 0
  trial_s: float = 0.0

  @property
  def full_tpt(self) -> float | None:
    """Its full windows' tokens over their seconds at this bucket; None: none measured yet."""
    return self.tokens / self.seconds if self.windows and self.seconds > 0 else None


def confirms_trial(tokens: int, profile_s: float, ar_tpt: float, confirm_margin: float) -> bool:
  """KnapSpecConfig.confirm_margin's test: a trial's rounds and its first full window's
  together, `tokens` in the profile_s seconds the profile times those rounds at, run at least
  (1 - confirm_margin) x AR's predicted tokens/s (ar_tpt)."""
  return tokens >= (1 - confirm_margin) * ar_tpt * profile_s


class KnapSpecPolicy:
  name = "knapspec"

  def __init__(self, model, profile: latency.LatencyProfile, config: KnapSpecConfig,
               width: int | None = None):
    self.model, self.profile, self.config = model, profile, config
    self.interval, self.threshold, self.width = config.interval, config.threshold, width
    self.used: set = set()  # (skip, gamma) pairs with a compiled program
    self.stand_ins_lost: set = set()  # (skip, gamma) pairs whose stand-in window lost to AR
    self.stand_ins_tried: set = set()  # (skip, gamma) pairs from above that ran their trial
    self.explored = False  # this generation ran its one search at a bucket with no record
    self.segment_key = None  # the segment programs' argument shapes (segment_compiled)
    self.background = (controller.background_compile_default()
                       if config.background_compile is None else config.background_compile)

  @property
  def kept_drafts(self) -> dict:
    """The drafts kept at this policy's width (Model.kept_drafts_at): a draft kept at the
    natural width was judged against natural AR, faster than AR at a width, and the other way
    round, so neither width borrows the other's."""
    return self.model.kept_drafts_at(self.width)

  def search_cost(self, attn_len: int) -> float:
    """Expected seconds of one search at this bucket: last measured on this model, else the
    profile's line through the searches it timed."""
    measured = self.model.search_times.get(attn_len)
    return measured if measured is not None else self.profile.search_s(attn_len)

  def search_share(self, n: int, capacity: int) -> tuple[float, str]:
    """The fraction of the AR time ahead that a search at context n may cost, and the rule that
    grants it (KnapSpecConfig: search_budget, gain_share, explore_budget)."""
    c = self.config
    gain = self.model.search_gains.get(attn_bucket(n, capacity))
    if gain is not None:
      return max(c.search_budget, c.gain_share * gain), (
          f"{c.search_budget:.0%} of the AR time, or {c.gain_share:.0%} of the {gain:.0%} "
          f"saving the last search here predicted")
    if self.explored:
      return c.search_budget, f"{c.search_budget:.0%} of the AR time (explored already)"
    return max(c.search_budget, c.explore_budget), (
        f"the {max(c.search_budget, c.explore_budget):.0%} budget of a first search here")

  def would_search(self, n: int, remaining: int, capacity: int) -> bool:
    """A search is worth its cost within search_share of the AR time still ahead."""
    t_ar = self.profile.t_step(None, attn_bucket(n + self.config.gamma_max + 1, capacity))
    cost = self.search_cost(attn_bucket(n, capacity))
    return cost <= self.search_share(n, capacity)[0] * remaining * t_ar

  def segment_compiled(self, state, skip: SkipMask, gamma: int, n: int) -> bool:
    """Whether the (greedy) segment program of (skip, gamma) at context n is compiled already
    in this model's compile cache (by an earlier generation or a warm-up).

    The arguments' shape key is computed once per generation (the weights' and the decode
    state's shapes do not change): the selection asks this of every (candidate, gamma) that
    beats AR, hundreds of times after a search, and computing it each time (0.3 ms on the
    2-vCPU CPU for Qwen2.5-1.5B's 198 weight arrays) made a decision cost up to five times its
    search on the H200 (BENCHMARKS.md 10.17)."""
    if self.segment_key is None:
      self.segment_key = compile_cache.shape_key(speculative.segment_args(self.model.params,
                                                                          state))
    cfg, capacity = self.model.cfg, state.cache.capacity
    statics = speculative.segment_program(
        cfg, skip, gamma, attn_bucket(n + speculative.round_span(cfg, gamma, self.width),
                                      capacity), width=self.width)
    return self.model.compiled.contains(statics, key=self.segment_key)

  def compiled_draft(self, state, skip: SkipMask, gamma: int, n: int) -> bool:
    """Whether (skip, gamma) can draft at context n without a compile: used already by this
    policy, or its segment program in the compile cache (segment_compiled)."""
    return (skip, gamma) in self.used or self.segment_compiled(state, skip, gamma, n)

  def search_static(self, attn_len: int) -> dict:
    chunk = self.config.search_chunk or knapsack.default_chunk(self.model.cfg.n_layers,
                                                               self.config.max_weight)
    return dict(attn_len=attn_len, tau=self.config.tau, max_weight=self.config.max_weight,
                protect_ends=self.config.protect_ends, whole_layers=not self.config.decoupled,
                chunk=chunk, round_len=self.config.search_round_len)

  def warmup(self, n_prompt: int, max_new_tokens: int):
    """AOT-compiles the search for every bucket where this run could afford a search, and the
    segment programs of the drafts kept for the buckets this run visits (keep). With
    search_new_buckets, also against_borrowed's scoring program at each such bucket where a
    draft could be borrowed: one is kept below it already, or this run searches below it first
    (a bucket with nothing below it never borrows, so a run that searches in one bucket only,
    on a model that keeps nothing, compiles no more than without the option). With
    background_compile="process", starts the compile worker."""
    if compile_cache.background_mode(self.background) == "process":
      self.model.compiled.start_worker()  # its start-up (seconds) outside the timed decode
    capacity = KVCache.capacity_for(self.model.cfg)
    end = min(n_prompt + max_new_tokens, self.model.cfg.max_seq_len)
    first_searched = None  # the lowest bucket this run could search at
    # the first search may run n_ref tokens in (search_after stops at the prompt's bucket's end)
    for n in range(n_prompt + self.config.n_ref, end):
      if not self.would_search(n, n_prompt + max_new_tokens - n, capacity):
        continue
      bucket = attn_bucket(n, capacity)
      knapsack.compile_search(self.model.params, self.model.cfg, self.model.compiled,
                              self.config.n_ref, **self.search_static(bucket))
      first_searched = bucket if first_searched is None else first_searched
      borrows = ((self.kept(capacity, n) is not None and bucket not in self.kept_drafts)
                 or (self.config.keep and first_searched < bucket))
      if self.config.search_new_buckets and borrows:
        knapsack.compile_mask_agreement(self.model.params, self.model.cfg, self.model.compiled,
                                        self.config.n_ref, attn_len=bucket,
                                        round_len=self.config.search_round_len)
    drafts = {self.kept(capacity, n) for n in range(n_prompt, max(end, n_prompt + 1))} - {None}
    if not drafts:
      return
    state = abstract_state(self.model)
    for draft in drafts:
      speculative.compile_segments(
          self.model.params, self.model.cfg, state, self.model.compiled, skip=draft.skip,
          gamma=draft.gamma, start=n_prompt, end=end, width=self.width)

  def draft_margin(self) -> float:
    """The fraction by which a draft's predicted tokens/s must beat AR's to be decoded: `margin`,
    or -try_below where a trial window will judge it (KnapSpecConfig.try_below), whichever
    admits more: try_below never makes a more permissive margin stricter."""
    c = self.config
    if c.try_below > 0 and c.keep and self.trial_window(None) is not None:
      return min(c.margin, -c.try_below)
    return c.margin

  def trial_window(self, measured_tpt: float | None) -> int | None:
    """The rounds of a drafting window whose draft no window has measured (KnapSpecConfig.
    trial_rounds), None: the interval (a measured draft, trials off, or a trial no shorter)."""
    trial = self.config.trial_rounds
    if measured_tpt is not None or not trial or trial >= self.interval:
      return None
    return trial

  def kept(self, capacity: int, n: int) -> KeptDraft | None:
    """The draft kept at context n's bucket, else at the nearest bucket below that has one;
    None where none was kept or it was dropped."""
    if not self.config.keep:
      return None
    bucket = attn_bucket(n, capacity)
    kept_drafts = self.kept_drafts
    if bucket in kept_drafts:
      return kept_drafts[bucket]
    below = [b for b in kept_drafts if b < bucket]
    return kept_drafts[max(below)] if below else None

  def plain_tokens(self, n: int, remaining: int, capacity: int) -> int | None:
    """Tokens to decode plainly from context n before deciding again: up to the first later
    bucket that has a kept draft of its own (`kept`; the warm-up compiled its programs) or that
    no search has explored yet and where a search would be allowed when it opens (would_search:
    within explore_budget where this generation has not searched yet); None (to the end) where
    neither lies within `remaining`.

    A decline used to run to the end: on the H200 (2K document, 1024 tokens, BENCHMARKS.md
    10.17) a generation whose draft at 2K was dropped decoded plainly past the 3K bucket, where
    the warm-up had compiled a draft kept there. Until session 38 it also ran past buckets never
    searched: on an H100 (Qwen2.5-Coder-1.5B, the 16K document decoded alone, BENCHMARKS.md
    10.41) every timed run declined at 16K after a first search on the answer's first tokens and
    decoded plainly through the next bucket (0.995x AR); on another H100 (10.42) the weak
    draft's windows happened to end in that bucket, whose first search, 526 tokens into the
    answer, found a draft predicted at 1.36x that the next runs decoded with (1.029x paired at
    16K, and the 28K document borrowed it: 1.366x)."""
    bucket = attn_bucket(n, capacity)
    while bucket < capacity and bucket + 1 - n < remaining:
      start = bucket + 1  # the first context of the next bucket
      bucket = attn_bucket(start, capacity)
      if bucket in self.kept_drafts:
        if self.kept(capacity, start) is not None:
          return start - n
      elif (bucket not in self.model.search_gains
            and self.would_search(start, remaining - (start - n), capacity)):
        return start - n
    return None

  def ar_speed(self, context: int, capacity: int, predicted: float) -> float:
    """AR's tokens/s at context, as a window is judged against it: measured there at this
    policy's width (Model.ar_speed), else `predicted` (the profile at that width). At a width,
    natural AR's speeds do not stand in: AR at width 11 runs 0.86-0.92x its natural speed."""
    measured = self.model.ar_speed(context, capacity, self.width)
    return predicted if measured is None else measured

  def observe(self, decision: Decision, window: dict, capacity: int):
    """After each window (controller.run): a kept draft whose windows measured slower than AR
    is dropped at its bucket, and the bucket's gain is set to what was measured, none, so that
    no later generation explores there again within explore_budget (only within
    search_budget). AR's speed is the median measured at that context (Model.ar_speed), else the
    profile's prediction: on the H200 the profile predicted Qwen2.5-1.5B's AR at 28K positions
    at 348 tok/s where it ran at 473, and a draft at 391-406 tok/s was kept through three
    generations (BENCHMARKS.md 10.8). Windows that decoded plainly while a program compiled,
    or ran under JUDGE_ROUNDS rounds, say too little to judge.

    A trial window (KnapSpecConfig.trial_rounds) is judged by its rounds as they ran (tokens,
    draft forwards, verifies) timed by the profile, against the profile's AR: what it measures is
    the draft's acceptance under the confidence exit, the uncertain part of the prediction. Its
    wall time says little: on the H200 (Qwen2.5-Coder-1.5B, BENCHMARKS.md 10.16-10.17) every
    window, plain or drafting, pays a fixed 4-5 ms beyond its steps (KnapSpec's 8-round trials:
    21 tokens in 44 ms where the profile timed the rounds at 32 ms, 14 in 41 ms against 29), so
    each trial measured 0.72-0.84x AR and dropped a draft whose rounds ran at 1.02-1.18x AR's
    predicted speed. The full windows after it, `interval` rounds each, are judged by their wall
    time against measured AR: together, once there are judge_windows of them at this bucket
    (KnapSpecConfig.judge_windows), and they must beat it by keep_margin. The first of them is
    also judged with the trial's rounds, at the profile's costs (KnapSpecConfig.confirm_margin).
    A window a confirmed draft decoded to its bucket's end is judged alone as well
    (KnapSpecConfig.bucket_end_alone)."""
    if not (self.config.keep and decision.drafts) or window["ar_tokens_while_compiling"] \
        or window["rounds"] < JUDGE_ROUNDS:
      return
    # a trial (a kept draft's, or a stand-in's from above): its rounds, at the profile's costs
    trial_lost = decision.rounds is not None and window["tokens"] < (
        decision.ar_tpt * window["predicted_s"])
    if decision.stand_in:  # not this bucket's record; one window under AR ends its stand-ins
      if decision.rounds is not None:
        lost = trial_lost
      else:
        ar_speed = self.ar_speed(decision.context, capacity, decision.ar_tpt)
        lost = window["measured_tokens_per_s"] < (1 + self.config.keep_margin) * ar_speed
      if lost:
        self.stand_ins_lost.add((decision.skip, decision.gamma))
      return
    bucket = attn_bucket(decision.context, capacity)
    measured = window["measured_tokens_per_s"]
    windows, tokens, seconds = 0, 0, 0.0  # the full windows' totals at this bucket
    trial_tokens, trial_s = 0, 0.0  # a trial that passes: kept to confirm (confirm_margin)
    if decision.rounds is not None:  # a trial: the rounds' acceptance, at the profile's costs
      slower = trial_lost
      trial_tokens, trial_s = window["tokens"], window["predicted_s"]
    else:
      here = self.kept_drafts.get(bucket)
      unconfirmed = False
      if here is not None and (here.skip, here.gamma) == (decision.skip, decision.gamma):
        windows, tokens, seconds = here.windows, here.tokens, here.seconds
        if here.trial_s > 0:  # its first full window: with the trial's rounds, as the trial
          unconfirmed = not confirms_trial(here.trial_tokens + window["tokens"],
                                           here.trial_s + window["predicted_s"],
                                           decision.ar_tpt, self.config.confirm_margin)
      windows, tokens = windows + 1, tokens + window["tokens"]
      seconds += window["tokens"] / max(measured, 1e-9)
      ar_speed = self.ar_speed(decision.context, capacity, decision.ar_tpt)
      bar = (1 + self.config.keep_margin) * ar_speed
      alone = (self.config.bucket_end_alone and decision.to_bucket_end
               and window["rounds"] >= self.config.bucket_end_rounds and measured < bar)
      slower = unconfirmed or alone or (windows >= self.config.judge_windows
                                        and tokens / seconds < bar)
    if slower:
      # A draft borrowed from a bucket below (`kept`) says nothing about what a search here
      # would find: the bucket keeps no gain, so a first search may still explore it. On the
      # H200 a gamma-10 draft chosen at 2K failed its trial at 28K and zeroed that bucket's
      # gain, and no search ever ran there (BENCHMARKS.md 10.17).
      if bucket in self.kept_drafts:
        self.model.search_gains[bucket] = 0.0
      own = self.kept_drafts.get(bucket)
      below = (self.kept(capacity, bucket_start(bucket) - 1)
               if self.config.search_new_buckets and own is not None and bucket_start(bucket) > 1
               else None)
      if below is not None and (below.skip, below.gamma) != (own.skip, own.gamma):
        # The bucket's own draft (search_new_buckets) lost: the draft below serves it again,
        # judged here by its own windows; the gain of 0 keeps a search from running here again.
        del self.kept_drafts[bucket]
        return
      self.kept_drafts[bucket] = None
    else:
      # Where the draft was chosen: the kept entry it decoded as (`kept`: the bucket's own, else
      # the one borrowed from below) when it is this draft, else here. The judged window's
      # context used to replace it, so a draft chosen at 3K read "chosen at context 8830" at 8K
      # (BENCHMARKS.md 10.21).
      source = self.kept(capacity, decision.context)
      same = source is not None and (source.skip, source.gamma) == (decision.skip, decision.gamma)
      chosen_at = source.context if same else decision.context
      self.kept_drafts[bucket] = KeptDraft(decision.skip, decision.gamma, decision.alpha,
                                           chosen_at, measured, decision.exit,
                                           windows, tokens, seconds, trial_tokens, trial_s)

  def candidate(self, skip: SkipMask, agree, top1_prob, **fields) -> Candidate:
    """A skip set as the selection sees it, from its per-token agreement with the full model
    and top-1 probabilities on the search's n_ref tokens (knapsack.Candidate,
    knapsack.mask_agreement): the smoothed acceptance, and its round under the confidence exit
    where exit_model is on."""
    exit = (selection.exit_rates(agree, top1_prob, self.threshold) if self.config.exit_model
            else None)
    return Candidate(skip, selection.smoothed_alpha(float(np.mean(agree)), len(agree)),
                     exit=exit, **fields)

  def against_borrowed(self, borrowed: KeptDraft, cands, state, ctx: controller.Context,
                       n: int, attn_len: int) -> Decision:
    """search_new_buckets: after the one search at a bucket with no draft of its own, either
    the search's best draft, predicted faster than the borrowed one by `margin`, is kept for
    this bucket (decoded now if compiled, else from the next warm-up on: plainly until then, up
    to a kept draft ahead), or the borrowed draft decodes here as before (`decide`'s kept
    path).

    The borrowed draft is compared at the acceptance its own search measured where it was
    chosen (and its windows since confirmed it), not at what the 16 tokens here say of its skip
    set; that same-token figure (knapsack.mask_agreement) is reported beside it in the reason.
    Scoring it on the same tokens looks fairer and chose worse in a CPU replay of the 8K
    document (Qwen2.5-Coder-1.5B, the H200's costs, BENCHMARKS.md 10.21). After the first 16
    generated tokens the search's best was predicted at 0.98x and the borrowed draft at 0.68x,
    and over the next 128 tokens they ran 1.04x and 1.02x. 112 tokens later the search's best
    was predicted at 1.18x and the borrowed draft at 0.95x, and over the next 128 they ran 0.97x
    and 1.18x. Run N on the H200 (BENCHMARKS.md 10.20) kept the borrowed draft at 8K-28K, where
    its rounds ran 1.08-1.29x. Sixteen tokens are a small sample; the borrowed draft's carried
    estimate has a measured record behind it."""
    p, capacity, c = self.profile, state.cache.capacity, self.config
    bucket = attn_bucket(n, capacity)
    agree, top1_prob = knapsack.mask_agreement(
        self.model.params, self.model.cfg, state.cache, ctx.tokens[n - c.n_ref:], n - c.n_ref,
        borrowed.skip, self.model.compiled, attn_len=bucket, round_len=c.search_round_len)
    here = self.candidate(borrowed.skip, agree, top1_prob)
    ar_tpt = 1 / p.t_step(None, attn_len)
    borrowed_tpt = selection.draft_tpt(borrowed.skip, borrowed.alpha, p, attn_len,
                                       borrowed.gamma, borrowed.exit)
    here_tpt = selection.draft_tpt(borrowed.skip, here.alpha, p, attn_len, borrowed.gamma,
                                   here.exit)
    best = selection.select(cands, p, attn_len, n, c.gamma_max, self.draft_margin())
    self.model.search_gains[bucket] = max(0.0, 1.0 - ar_tpt / max(best.best_tpt, borrowed_tpt))
    skip = borrowed.skip
    versus = (f"the draft borrowed from context {borrowed.context} ({len(skip.attn_skipped)} "
              f"attn + {len(skip.mlp_skipped)} MLP, gamma {borrowed.gamma}) predicts "
              f"{borrowed_tpt / ar_tpt:.2f}x AR (alpha {borrowed.alpha:.2f}; on these tokens "
              f"{here.alpha:.2f}, {here_tpt / ar_tpt:.2f}x)")
    if not (best.drafts and best.predicted_tpt > (1 + c.margin) * borrowed_tpt
            and (best.skip, best.gamma) != (borrowed.skip, borrowed.gamma)):
      decision = self.decide_kept(borrowed, state, ctx, n, attn_len)
      return dataclasses.replace(decision, reason=f"searched here: {best.reason}; {versus}; "
                                 f"{decision.reason}", best_skip=best.best_skip,
                                 best_gamma=best.best_gamma)
    self.kept_drafts[bucket] = KeptDraft(best.skip, best.gamma, best.alpha, n,
                                         exit=best.exit)
    if self.background or self.compiled_draft(state, best.skip, best.gamma, n):
      self.used.add((best.skip, best.gamma))
      rounds = self.trial_window(None)
      return dataclasses.replace(best, rounds=rounds, reason=f"{best.reason}, over {versus}" + (
          f"; a trial of {rounds} rounds" if rounds else ""))
    waiting = f"kept for the next warm-up to compile ({best.reason}, over {versus})"
    stand_in = self.stand_in(self.kept_drafts[bucket], state, n, attn_len, waiting)
    if stand_in is not None:
      return dataclasses.replace(stand_in, best_skip=best.best_skip, best_gamma=best.best_gamma)
    return dataclasses.replace(
        best, skip=None, gamma=0, predicted_tpt=ar_tpt, exit=None,
        ar_tokens=self.plain_tokens(n, ctx.remaining, capacity), reason=waiting)

  def stand_in(self, waiting: KeptDraft | None, state, n: int, attn_len: int,
               why: str, over: tuple[KeptDraft, float] | None = None) -> Decision | None:
    """A compiled draft kept at another bucket that decodes at context n instead of AR, or None:
    decode plainly. While `waiting`, the draft kept at context n's bucket, has no compiled
    program (the next warm-up compiles it), the draft kept at the nearest bucket below; with
    waiting None (a decline, KnapSpecConfig.stand_in_above), the draft kept at the nearest
    bucket above, where the profile predicts it here faster than AR by `margin`. In both cases
    only where its segment program at this context is compiled (segment_compiled: no compile
    inside the decode) and its last measured window, if any (one below must have one), beat AR
    there by keep_margin (AR measured at that bucket, else the profile's). Its windows here are
    not this bucket's record: `observe` judges each alone against AR, and one that loses by
    keep_margin ends the draft's stand-ins in this generation. A draft from above first runs a
    trial (trial_rounds) in each generation, judged as a kept draft's trial is, by its rounds at
    the profile's costs: it was measured on another text, and a full window that loses costs up
    to `interval` rounds (on Qwen's short Spec-Bench prompts, H100, BENCHMARKS.md 10.43, a draft
    kept at the 512 bucket ran other prompts' tails at 0.92-1.04x AR).

    over: (the draft kept for context n, the ratio to AR here its full windows measured): with
    waiting None, the draft above stands in over it only where it is another draft and its own
    ratio to AR beats that by `margin`: measured at its bucket (its full windows' tokens over
    their seconds, else its last window, against AR there), else as the profile predicts it
    here (its trial then judges it).

    On an H100 (Qwen2.5-Coder-1.5B, the 2K document, 1024 new tokens, BENCHMARKS.md 10.37) the
    first timed run of every process found a better draft at context 2165, in a new bucket,
    uncompiled, and decoded its last 854 tokens plainly at 545 tok/s, while the draft below,
    compiled, had just run 581-584 tok/s: that run ran 0.92-0.96x AR."""
    capacity, p = state.cache.capacity, self.profile
    start = bucket_start(attn_bucket(n, capacity))
    if waiting is not None:
      side, there = "below", start - 1
      draft = self.kept(capacity, there) if start > 1 else None
      if draft is None or draft.measured_tpt is None or (
          (draft.skip, draft.gamma) == (waiting.skip, waiting.gamma)):
        return None
    else:
      higher = self.above(capacity, n)
      if higher is None:
        return None
      side, (there, draft) = "above", higher
      if over is not None and (draft.skip, draft.gamma) == (over[0].skip, over[0].gamma):
        return None
    if ((draft.skip, draft.gamma) in self.stand_ins_lost
        or not self.segment_compiled(state, draft.skip, draft.gamma, n)):
      return None
    ar_there = self.ar_speed(there, capacity, 1 / p.t_step(None, attn_bucket(there, capacity)))
    if draft.measured_tpt is not None and draft.measured_tpt < (
        1 + self.config.keep_margin) * ar_there:
      return None
    t_ar = p.t_step(None, attn_len)
    tpt = selection.draft_tpt(draft.skip, draft.alpha, p, attn_len, draft.gamma, draft.exit)
    if waiting is None and tpt <= (1 + self.config.margin) / t_ar:
      return None
    if waiting is None and over is not None:
      ratio = (tpt * t_ar if draft.measured_tpt is None
               else (draft.measured_tpt if draft.full_tpt is None else draft.full_tpt)
               / ar_there)
      if ratio <= (1 + self.config.margin) * over[1]:
        return None
      why = f"{why}; the draft kept above {ratio:.2f}x"
    self.used.add((draft.skip, draft.gamma))
    rounds = None  # from above, first a trial on this generation's text (trial_rounds)
    if waiting is None and (draft.skip, draft.gamma) not in self.stand_ins_tried:
      self.stand_ins_tried.add((draft.skip, draft.gamma))
      rounds = self.trial_window(None)
    measured = ("not measured yet" if draft.measured_tpt is None
                else f"last window {draft.measured_tpt:.0f} tok/s")
    trial = f"; a trial of {rounds} rounds" if rounds else ""
    return Decision(draft.skip, draft.gamma, draft.alpha, tpt, 1 / t_ar, tpt, n,
                    f"{why}; meanwhile the draft kept {side} (chosen at context "
                    f"{draft.context}; {measured}, AR {ar_there:.0f} there; here the profile's "
                    f"{tpt * t_ar:.2f}x of AR{trial})", exit=draft.exit, stand_in=True,
                    rounds=rounds)

  def above(self, capacity: int, n: int) -> tuple[int, KeptDraft] | None:
    """The draft kept at the nearest bucket above context n's that has one (not dropped), and
    that bucket's first context."""
    bucket = attn_bucket(n, capacity)
    higher = [b for b, k in self.kept_drafts.items() if b > bucket and k is not None]
    return (bucket_start(min(higher)), self.kept_drafts[min(higher)]) if higher else None

  def decide_kept(self, kept: KeptDraft, state, ctx: controller.Context, n: int,
                  attn_len: int) -> Decision:
    """Decoding with a kept draft (`decide`, no search): a trial window while no window has
    measured it; plainly (to the end, or to a kept draft ahead) while its program is not
    compiled, which the next warm-up does; to the end of the bucket where it is confirmed
    (bucket_windows). Its reason names AR's speed as the profile predicts it and, where AR was
    measured at this context's bucket and this width, as measured: the bar `observe` judges the
    draft's full windows against."""
    t_ar = self.profile.t_step(None, attn_len)
    if not (self.background or self.compiled_draft(state, kept.skip, kept.gamma, n)):
      waiting = (f"kept draft (chosen at context {kept.context}) not compiled: the next warm-up "
                 f"compiles it")
      stand_in = self.stand_in(kept, state, n, attn_len, waiting)
      if stand_in is not None:
        return stand_in
      return Decision(None, 0, kept.alpha, 1 / t_ar, 1 / t_ar, 0.0, n, waiting,
                      ar_tokens=self.plain_tokens(n, ctx.remaining, state.cache.capacity))
    if self.config.stand_in_above and kept.full_tpt is not None:
      here = kept.full_tpt / self.ar_speed(n, state.cache.capacity, 1 / t_ar)
      stand_in = self.stand_in(None, state, n, attn_len, over=(kept, here), why=(
          f"kept (chosen at context {kept.context}; {kept.windows} full window(s) "
          f"{here:.2f}x AR here)"))
      if stand_in is not None:
        return stand_in
    tpt = selection.draft_tpt(kept.skip, kept.alpha, self.profile, attn_len, kept.gamma,
                              kept.exit)
    rounds = self.trial_window(kept.measured_tpt)
    measured = (f"not measured yet: a trial of {rounds} rounds" if rounds
                else "not measured yet" if kept.measured_tpt is None
                else f"last window {kept.measured_tpt:.0f} tok/s" + (
                    f", {kept.windows} full window(s) {kept.full_tpt:.0f} tok/s"
                    if kept.full_tpt is not None else ""))
    self.used.add((kept.skip, kept.gamma))
    to_end = rounds is None and self.confirmed(kept, state.cache.capacity, n)
    ar_measured = self.model.ar_speed(n, state.cache.capacity, self.width)  # what judges windows
    return Decision(kept.skip, kept.gamma, kept.alpha, tpt, 1 / t_ar, tpt, n,
                    f"kept (chosen at context {kept.context}; {measured}, AR predicted "
                    f"{1 / t_ar:.0f}"
                    + (f", measured {ar_measured:.0f}" if ar_measured is not None else "")
                    + ("; to the bucket's end" if to_end else "") + ")",
                    rounds=rounds, exit=kept.exit, to_bucket_end=to_end)

  def confirmed(self, kept: KeptDraft, capacity: int, n: int) -> bool:
    """bucket_windows: whether `kept` is the draft of context n's own bucket and has passed its
    judgement there (judge_windows full windows, no trial left to confirm; `observe` drops a
    draft that fails it), and also of the bucket its window's program runs in: within a
    round's span of a bucket's end that is the next bucket (whose windows `observe` credits to
    the bucket of the decision's context, as it does any window's)."""
    span = speculative.round_span(self.model.cfg, kept.gamma, self.width)
    buckets = {attn_bucket(n, capacity), attn_bucket(n + span, capacity)}
    judged = [self.kept_drafts.get(b) for b in buckets]
    return self.config.bucket_windows and all(
        k is not None and (k.skip, k.gamma) == (kept.skip, kept.gamma)
        and k.windows >= self.config.judge_windows and k.trial_s == 0 for k in judged)

  def to_collect(self, n: int, n_out: int, capacity: int) -> int:
    """Generated tokens to decode plainly at context n, n_out of them generated, before this
    generation's first search: up to n_ref + search_after generated tokens, but not past the end
    of context n's bucket, and never short of n_ref generated tokens. A search records its
    outcome at its own bucket; one that ran past the bucket the generation began in left that
    bucket without a record, so every later generation collected there again: on the H200
    (session 25, the 2K document of 1996 tokens, search_after=112, BENCHMARKS.md 10.42) each
    timed run decoded its first 127 tokens plainly before drafting with the draft kept at the
    next bucket."""
    c = self.config
    wanted = max(c.n_ref + c.search_after - n_out, 0)
    return max(c.n_ref - n_out, min(wanted, attn_bucket(n, capacity) - n))

  def decide(self, model, state, ctx: controller.Context) -> Decision:
    cfg, r, p = model.cfg, self.config.n_ref, self.profile
    n, capacity = len(ctx.tokens), state.cache.capacity
    attn_len = attn_bucket(n + self.config.gamma_max + 1, capacity)
    t_ar = p.t_step(None, attn_len)
    kept = self.kept(capacity, n)
    bucket = attn_bucket(n, capacity)
    borrowed = None  # search_new_buckets: the draft below, searched against once here
    missing = self.to_collect(n, ctx.n_out, capacity)
    if (kept is not None and self.config.search_new_buckets
        and bucket not in self.kept_drafts and bucket not in self.model.search_gains
        and self.would_search(n + missing, ctx.remaining - missing, capacity)):
      borrowed, kept = kept, None
    if kept is not None:  # no search: the draft is chosen already
      return self.decide_kept(kept, state, ctx, n, attn_len)
    # The search scores drafts on generated tokens: collect r of them first, unless no search
    # will be affordable by then, in which case decode plainly to the end in one go.
    if missing and self.would_search(n + missing, ctx.remaining - missing, capacity):
      return Decision(None, 0, 0.0, 1 / t_ar, 1 / t_ar, 0.0, n,
                      f"collecting {missing} generated tokens for the search", ar_tokens=missing)
    if missing or not self.would_search(n, ctx.remaining, capacity):
      reason = (f"no search: it would cost {self.search_cost(bucket):.3f} s, over "
                f"{self.search_share(n, capacity)[1]} of the {ctx.remaining} tokens left")
      stand_in = (self.stand_in(None, state, n, attn_len, reason)  # nothing kept here or below
                  if self.config.stand_in_above else None)
      return stand_in or Decision(None, 0, 0.0, 1 / t_ar, 1 / t_ar, 0.0, n, reason,
                                  ar_tokens=self.plain_tokens(n, ctx.remaining, capacity))
    if self.config.latency_weights:
      w_attn, w_mlp = knapsack.integer_weights(p.t_attn(attn_len), p.m, self.config.max_weight)
    else:
      w_attn = w_mlp = 1
    self.explored = True
    compile_before = model.compiled.stats.waited_s
    start = time.perf_counter()
    result = knapsack.search(model.params, cfg, state.cache, ctx.tokens[n - r:], n - r, w_attn,
                             w_mlp, model.compiled, **self.search_static(bucket))
    found = knapsack.candidates(result)
    spent = time.perf_counter() - start - (model.compiled.stats.waited_s - compile_before)
    model.search_times[bucket] = spent
    cands = [self.candidate(c.skip, c.agree, c.top1_prob, budget=c.budget, cosine=c.cosine)
             for c in found if c.skip.n_skipped]
    if borrowed is not None:
      return self.against_borrowed(borrowed, cands, state, ctx, n, attn_len)
    compile_cost = (p.segment_compile_s if self.config.charge_compile and not self.background
                    else 0.0)
    horizon = self.config.compile_horizon or min(ctx.remaining, 4 * self.interval)
    decision = selection.select(
        cands, p, attn_len, n, self.config.gamma_max, self.draft_margin(),
        compile_cost_s=compile_cost, window_tokens=horizon,
        is_compiled=lambda skip, gamma: self.compiled_draft(state, skip, gamma, n))
    if not decision.drafts and compile_cost > 0 and self.config.keep:
      unpaid = selection.select(cands, p, attn_len, n, self.config.gamma_max,
                                self.draft_margin())
      if unpaid.drafts:  # pays once compiled: keep it for the next generation's warm-up
        self.kept_drafts[bucket] = KeptDraft(unpaid.skip, unpaid.gamma, unpaid.alpha, n,
                                             exit=unpaid.exit)
        model.search_gains[bucket] = max(0.0, 1.0 - unpaid.ar_tpt / unpaid.best_tpt)
        return dataclasses.replace(  # plain decoding (to the end, or to a kept draft)
            decision, ar_tokens=self.plain_tokens(n, ctx.remaining, capacity),
            reason=f"kept for the next warm-up to compile ({unpaid.reason}; its "
                   f"{compile_cost:.1f} s compile does not pay in {horizon} tokens)")
    # What this search predicts a draft saves here: the budget of the next searches here.
    model.search_gains[bucket] = max(0.0, 1.0 - decision.ar_tpt / decision.best_tpt
                                     if decision.best_tpt > 0 else 0.0)
    if decision.drafts:
      self.used.add((decision.skip, decision.gamma))
      if self.config.keep:
        self.kept_drafts[bucket] = KeptDraft(decision.skip, decision.gamma, decision.alpha,
                                             n, exit=decision.exit)
        rounds = self.trial_window(None)
        if rounds:
          decision = dataclasses.replace(decision, rounds=rounds,
                                         reason=f"{decision.reason}; a trial of {rounds} rounds")
    else:  # wait until another search fits its budget again
      share = self.search_share(n, capacity)[0]
      decision = dataclasses.replace(decision, ar_tokens=max(
          self.interval, math.ceil(spent / (share * t_ar)) if share > 0 else ctx.remaining))
    return decision


def default_fixed_skip(n_layers: int) -> SkipMask:
  """FixedConfig's skip set when none is given: every other inner layer's attention and MLP."""
  inner = range(1, n_layers - 1, 2)
  return SkipMask.from_layers(n_layers, inner, inner)


@dataclasses.dataclass(frozen=True)
class FixedConfig:
  """A fixed draft: skip (None = default_fixed_skip), gamma, threshold."""

  skip: SkipMask | None = None
  gamma: int = 4
  threshold: float = 0.7
  interval: int = 1 << 20

  def __post_init__(self):
    _check_common(self.gamma, self.threshold, self.interval)
    if self.skip is not None and not isinstance(self.skip, SkipMask):
      raise MethodError(f"skip must be a SkipMask (e.g. SkipMask.from_layers(n_layers, attn=..., "
                        f"mlp=...)) or None, got {type(self.skip).__name__}")


class FixedPolicy:
  name = "fixed"

  def __init__(self, model, profile, config: FixedConfig,
               width: int | None = None):
    cfg = model.cfg
    self.skip = (config.skip or default_fixed_skip(cfg.n_layers)).check(cfg.n_layers)
    self.model, self.config, self.profile = model, config, profile
    self.interval, self.threshold, self.width = config.interval, config.threshold, width

  def warmup(self, n_prompt: int, max_new_tokens: int):
    """The skip set is known before decoding: compile its programs now, not in the timed run."""
    state = abstract_state(self.model)
    speculative.compile_segments(
        self.model.params, self.model.cfg, state, self.model.compiled, skip=self.skip,
        gamma=self.config.gamma, start=n_prompt, end=n_prompt + max_new_tokens,
        width=self.width)

  def decide(self, model, state, ctx):
    n = len(ctx.tokens)
    # priced at the bucket its rounds run at (a verify of a width reaches width positions)
    attn_len = attn_bucket(n + speculative.round_span(model.cfg, self.config.gamma, self.width),
                           state.cache.capacity)
    ar = 1 / self.profile.t_step(None, attn_len)
    tpt = selection.draft_tpt(self.skip, 0.0, self.profile, attn_len, self.config.gamma)
    return Decision(self.skip, self.config.gamma, float("nan"), tpt, ar, tpt, n, "fixed set")


@dataclasses.dataclass(frozen=True)
class DelConfig:
  """DEL: exit layer and draft length by Tokens-per-Layer E(a_l, d) / (d l + L)."""

  interval: int = 64
  n_ref: int = 16
  gamma_max: int = 10
  threshold: float = 0.7
  min_exit: int = 2

  def __post_init__(self):
    _check_common(self.gamma_max, self.threshold, self.interval, "gamma_max")
    _check_int("n_ref", self.n_ref, 1)
    _check_int("min_exit", self.min_exit, 1)


def del_choice(agree, min_exit: int, gamma_max: int) -> tuple[float, int | None, int, float]:
  """DEL's rule: the exit layer l >= min_exit and draft length d that maximize Tokens-per-Layer
  E(a_l, d) / (d l + L), a_l the exit's top-1 agreement with the full model (agree[l - 1], L =
  len(agree)); (tpl, None, 0, 0.0) when no exit beats AR's 1 / L.

  a_l is the raw agreement, as DEL measures it. This project first passed it through KnapSpec's
  add-one smoothing ((k + 1) / (n + 2), selection.smoothed_alpha), which turned one agreeing
  token in 16 at layer 2 of Qwen2.5-1.5B into a = 0.11 and "TPL 1.04x": DEL then drafted from
  layer 2 at acceptance 0-0.1 (0.64-0.79x AR on the H200, BENCHMARKS.md 10.8). Raw, that exit
  scores 0.99x AR's TPL and DEL declines."""
  L = len(agree)
  best = (1.0 / L, None, 0, 0.0)  # AR in tokens per layer
  for exit_layer in range(min_exit, L):
    alpha = float(agree[exit_layer - 1])
    for d in range(1, gamma_max + 1):
      tpl = float(selection.expected_tokens(alpha, d)) / (d * exit_layer + L)
      if tpl > best[0]:
        best = (tpl, exit_layer, d, alpha)
  return best


class DelPolicy:
  name = "del"

  def __init__(self, model, profile, config: DelConfig,
               width: int | None = None):
    self.model, self.config, self.profile = model, config, profile
    self.interval, self.threshold, self.width = config.interval, config.threshold, width

  def warmup(self, n_prompt: int, max_new_tokens: int):
    for attn_len in _search_buckets(self.model.cfg, n_prompt + self.config.n_ref,
                                    n_prompt + max_new_tokens):
      knapsack.compile_exit_agreement(self.model.params, self.model.cfg, self.model.compiled,
                                      self.config.n_ref, attn_len=attn_len)

  def decide(self, model, state, ctx):
    cfg, r, n = model.cfg, self.config.n_ref, len(ctx.tokens)
    attn_len = attn_bucket(n + self.config.gamma_max + 1, state.cache.capacity)
    ar = 1 / self.profile.t_step(None, attn_len)
    if n <= r:
      return Decision(None, 0, 0.0, ar, ar, 0.0, n, "too few tokens",
                      ar_tokens=self.config.interval)
    agree = knapsack.exit_agreement(model.params, cfg, state.cache, ctx.tokens[n - r:], n - r,
                                    model.compiled)
    L = cfg.n_layers
    tpl, exit_layer, d, alpha = del_choice(agree, self.config.min_exit, self.config.gamma_max)
    if exit_layer is None:
      return Decision(None, 0, 0.0, ar, ar, 0.0, n, "declined: no exit beats AR in TPL",
                      ar_tokens=self.config.interval)
    skip = SkipMask.early_exit(L, exit_layer)
    tpt = selection.draft_tpt(skip, alpha, self.profile, attn_len, d)
    return Decision(skip, d, alpha, tpt, ar, tpt, n, f"exit {exit_layer}, TPL {tpl * L:.2f}x")


@dataclasses.dataclass(frozen=True)
class ClaspConfig:
  """CLaSp: skip exactly n_skip whole layers chosen by a DP on the last token's hidden states.

  interval: rounds between re-optimizations. CLaSp re-runs its DP after every verification; in
  an engine with one compiled program per skip set that would compile nearly every round, so
  the default re-optimizes every 8 rounds (set 1 for the original schedule).
  """

  n_skip: int = 8
  gamma: int = 4
  threshold: float = 0.7
  interval: int = 8
  n_ref: int = 1

  def __post_init__(self):
    _check_common(self.gamma, self.threshold, self.interval)
    _check_int("n_skip", self.n_skip, 1)
    _check_int("n_ref", self.n_ref, 1)


class ClaspPolicy:
  name = "clasp"

  def __init__(self, model, profile, config: ClaspConfig,
               width: int | None = None):
    if not 0 < config.n_skip < model.cfg.n_layers - 1:
      raise MethodError(f"n_skip must be in 1..{model.cfg.n_layers - 2}, got {config.n_skip}")
    self.model, self.config, self.profile = model, config, profile
    self.interval, self.threshold, self.width = config.interval, config.threshold, width

  def warmup(self, n_prompt: int, max_new_tokens: int):
    for attn_len in _search_buckets(self.model.cfg, n_prompt + self.config.n_ref,
                                    n_prompt + max_new_tokens):
      knapsack.compile_search(self.model.params, self.model.cfg, self.model.compiled,
                              self.config.n_ref, attn_len=attn_len, whole_layers=True)

  def decide(self, model, state, ctx):
    cfg, r, n = model.cfg, self.config.n_ref, len(ctx.tokens)
    attn_len = attn_bucket(n + speculative.round_span(cfg, self.config.gamma, self.width),
                           state.cache.capacity)  # the bucket its rounds run at, as FixedPolicy
    ar = 1 / self.profile.t_step(None, attn_len)
    if n <= r:
      return Decision(None, 0, 0.0, ar, ar, 0.0, n, "too few tokens", ar_tokens=1)
    # Whole layers as items of weight 1 each: budget j = number of skipped layers = M.
    result = knapsack.search(model.params, cfg, state.cache, ctx.tokens[n - r:], n - r, 1, 1,
                             model.compiled, whole_layers=True)
    found = {len(c.skip.attn_skipped): c for c in knapsack.candidates(result)}
    pick = found.get(self.config.n_skip) or found[max(found)]
    tpt = selection.draft_tpt(pick.skip, pick.agreement, self.profile, attn_len,
                              self.config.gamma)
    return Decision(pick.skip, self.config.gamma, pick.agreement, tpt, ar, tpt, n,
                    f"{len(pick.skip.attn_skipped)} layers skipped")


def _search_buckets(cfg, start: int, end: int) -> list[int]:
  """The attention buckets a search over contexts start..end-1 runs at."""
  capacity = KVCache.capacity_for(cfg)
  return sorted({attn_bucket(n, capacity) for n in range(start, min(end, cfg.max_seq_len))})


_POLICIES = {"knapspec": (KnapSpecPolicy, KnapSpecConfig),
             "fixed": (FixedPolicy, FixedConfig),
             "del": (DelPolicy, DelConfig),
             "clasp": (ClaspPolicy, ClaspConfig)}


def _check_width(width, config):
  """width (bf16 agreement with AR at the same width, controller.run) must hold every verify."""
  if width is None:
    return
  name = "gamma" if hasattr(config, "gamma") else "gamma_max"
  longest = getattr(config, name)
  if (not isinstance(width, int) or isinstance(width, bool)
      or not longest + 1 <= width <= SLACK):
    raise MethodError(f"width must be an integer in {longest + 1}..{SLACK} "
                      f"(it must hold the longest verify, {name} + 1 = {longest + 1}), "
                      f"got {width!r}")


def profile_for(model) -> latency.LatencyProfile:
  if model.profile is None:
    model.profile = latency.load_or_measure(model.params, model.cfg, model.params["embed"].dtype,
                                            model.profile_name, compiled=model.compiled)
  return model.profile


def _config(name, config_cls, config, options):
  """The method's config: the one given (of the right type, with no loose options), or one
  built from the options."""
  if config is None:
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
      raise MethodError(f"method {name!r} has no options {unknown} (its options: the fields of "
                        f"{config_cls.__name__})")
    return config_cls(**options)
  if not isinstance(config, config_cls):
    raise MethodError(f"method {name!r} takes config={config_cls.__name__}(...), got a "
                      f"{type(config).__name__}")
  if options:
    raise MethodError(f"give either config= or options, not both (got options "
                      f"{sorted(options)})")
  return config


def _make(name):
  policy_cls, config_cls = _POLICIES[name]

  def decode(model, state, prompt_ids, config=None, sampling=None, width=None, **options):
    config = _config(name, config_cls, config, options)
    _check_width(width, config)
    profile = profile_for(model).at_width(width)  # its steps and verifies at the run's width
    policy = policy_cls(model, profile, config, width=width)
    warm = getattr(config, "n_ref", 0) if name in ("del", "clasp") else 0
    state, stats = controller.run(model, state, prompt_ids, policy, profile,
                                  warmup_tokens=warm, background=getattr(policy, "background",
                                                                         None),
                                  sampling=sampling, width=width)
    stats["config"] = {k: (v.to_list() if isinstance(v, SkipMask) else v)
                       for k, v in dataclasses.asdict(config).items()}
    return state, stats

  def warmup(model, n_prompt, max_new_tokens, config=None, sampling=None, width=None,
             **options):
    # With sampling, the sampling programs compile in the first run (counted in
    # compile_in_decode_s); the warm-up compiles the greedy ones.
    config = _config(name, config_cls, config, options)
    _check_width(width, config)
    policy = policy_cls(model, profile_for(model).at_width(width), config, width=width)
    ar_warmup(model, n_prompt, max_new_tokens, width=width)  # its plain steps: that width too
    if hasattr(policy, "warmup"):
      policy.warmup(n_prompt, max_new_tokens)

  return decode, warmup


# name -> (decode, warmup): every method, AR first (api builds its registry from this table).
METHODS = {"ar": (ar_decode, ar_warmup), **{name: _make(name) for name in _POLICIES}}
