"""What a decode window costs a generation: one kept draft decoded in `interval`-round windows
against the same draft decoded to each bucket's end (KnapSpecConfig.bucket_windows), paired with
AR on the same compiled model.

  python experiments/kept_draft_windows.py                        # SmolLM2, CPU, a short check
  python experiments/kept_draft_windows.py --model=$QWEN_GGUF --dtype=bfloat16 \
      --draft_vocab=16384 --prompt_tokens=16000 --new_tokens=1024 --repeats=5 --masks=BITS

The draft is pinned: every attention bucket the generation visits holds it as a kept draft
already confirmed there (judge_windows windows, a measured record far above AR's, so `observe`
keeps it), as a benchmark's timed runs find the buckets their warm-up runs judged. No search
runs. Each repeat runs AR, then the two window settings, in an order that alternates from repeat
to repeat; the script prints per setting the median decode time, tokens/s and speedup over AR
(paired: each repeat's AR), the windows, the host's time after each window to the next one's
start outside the decision (`host_s`; `read_s` of it the device read), the generation's time
outside its windows (host_between_windows.outside_windows_s), and whether the output is AR's.
Records: --output (JSON).

--host_profile: after the repeats, one more generation per setting under cProfile, and per
generation and per extra window (their difference over the difference in windows) the host's
seconds and calls in what happens between and around the device's work: device reads
(jax.Array values fetched, the wait for the device included), program calls (a compiled
program's dispatch, returning before the device finishes), and eager device operations (one op
outside any program: a Python scalar made an array, an array made of zeros); stored as
`host_profile` in the JSON. 2.0 ms a window outside the windows on the H200 (BENCHMARKS.md 10.35)
against 0.69 ms on a 2-vCPU CPU: this says where it goes. The profiler's own overhead inflates
the Python share; compare the groups, not the totals, with the timed repeats.
"""

import cProfile
import json
import pathlib
import pstats
import statistics
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import knapspec_jax as ks  # noqa: E402
from knapspec_jax import datasets, decoding, latency, methods  # noqa: E402
from knapspec_jax.kv_cache import KVCache  # noqa: E402
from host_between_windows import outside_windows_s  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A checkpoint path or packaged name (default: the "
                             "bundled SmolLM2).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "float32 or bfloat16.")
_DRAFT_VOCAB = flags.DEFINE_integer("draft_vocab", 0, "Drafts score this many tokens "
                                    "(load_model's draft_vocab; 0: all).")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 0, "A long-context document of about "
                                      "this many tokens (0: Spec-Bench's first writing prompt).")
_NEW = flags.DEFINE_integer("new_tokens", 48, "New tokens per generation (EOS ignored).")
_MASKS = flags.DEFINE_list("masks", [], "The draft as a SkipMask bit string (a window "
                           "record's decision.skip joined); default: the MLP of every other "
                           "inner layer.")
_GAMMA = flags.DEFINE_integer("gamma", 4, "Draft length.")
_INTERVAL = flags.DEFINE_integer("interval", 64, "Rounds per window without bucket_windows.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Paired repeats (each: AR and both settings).")
_PROFILE = flags.DEFINE_string("profile", None, "A latency profile JSON for the decisions' "
                               "predictions (default: the model's stored one, else measured).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path for every generation's numbers.")
_HOST_PROFILE = flags.DEFINE_bool("host_profile", False, "After the repeats, one generation per "
                                  "setting under cProfile: the host's calls and time per extra "
                                  "window in device reads, program calls and eager device "
                                  "operations.")

SETTINGS = {"interval windows": False, "bucket windows": True}
# What the host does around the device's work, as cProfile names it in JAX: (file ending,
# function) and whether the function's own time (tottime) or its time with callees (cumtime)
# counts. A device read waits in jax.Array._value; a compiled program's C++ dispatch runs inside
# Compiled.__call__ (its own time: the C++ call is not profiled apart); an eager op dispatches
# through dispatch.apply_primitive.
HOST_GROUPS = {"device reads": ("jax/_src/array.py", "_value", "cumtime"),
               "program calls": ("jax/_src/stages.py", "__call__", "tottime"),
               "eager device ops": ("jax/_src/dispatch.py", "apply_primitive", "cumtime")}


def host_split(profile: cProfile.Profile) -> dict:
  """{group: {"ms", "calls"}} over a profiled generation, for HOST_GROUPS."""
  out = {}
  stats = pstats.Stats(profile).stats
  for group, (path, name, column) in HOST_GROUPS.items():
    ms = calls = 0.0
    for (file, _, func), (_, ncalls, tottime, cumtime, _) in stats.items():
      if func == name and file.replace("\\", "/").endswith(path):
        ms += 1e3 * (tottime if column == "tottime" else cumtime)
        calls += ncalls
    out[group] = dict(ms=ms, calls=calls)
  return out


def draft_mask(n_layers: int) -> ks.SkipMask:
  if _MASKS.value:
    if len(_MASKS.value) != 1 or len(_MASKS.value[0]) != 2 * n_layers:
      raise app.UsageError(f"--masks: one bit string of {2 * n_layers} bits (attention, MLP of "
                           f"layer 0, then layer 1, ...)")
    return ks.SkipMask.from_list([int(c) for c in _MASKS.value[0]])
  return ks.SkipMask.from_layers(n_layers, attn=[], mlp=range(1, n_layers - 1, 2))


def pin(model, draft: methods.KeptDraft, n_prompt: int, judge_windows: int) -> None:
  """The draft kept and confirmed at every bucket from the prompt's to the generation's end."""
  capacity = KVCache.capacity_for(model.cfg)
  model.kept_drafts.clear(), model.search_gains.clear()
  for n in range(n_prompt, n_prompt + _NEW.value + 1):
    model.kept_drafts[decoding.attn_bucket(n, capacity)] = methods.KeptDraft(
        draft.skip, draft.gamma, draft.alpha, n_prompt, measured_tpt=1e9,
        windows=judge_windows, tokens=10**9, seconds=1.0)


def main(argv):
  del argv
  model = ks.load_model(_MODEL.value, dtype=_DTYPE.value, draft_vocab=_DRAFT_VOCAB.value)
  if _PROFILE.value:
    model.profile = latency.LatencyProfile.load(_PROFILE.value)
  item = (datasets.long_document_prompt(model.tokenizer, _PROMPT_TOKENS.value)
          if _PROMPT_TOKENS.value else datasets.spec_bench_subset(1, ["writing"])[0])
  ids = datasets.encode(model.tokenizer, item)
  draft = methods.KeptDraft(draft_mask(model.cfg.n_layers), _GAMMA.value, 0.9, len(ids))
  configs = {name: ks.KnapSpecConfig(interval=_INTERVAL.value, search_new_buckets=False,
                                     bucket_windows=on) for name, on in SETTINGS.items()}
  judge = next(iter(configs.values())).judge_windows

  def generate(name):
    if name == "ar":
      return ks.generate(model, ids, _NEW.value, ignore_eos=True)
    pin(model, draft, len(ids), judge)
    return ks.generate(model, ids, _NEW.value, method="knapspec", ignore_eos=True,
                       config=configs[name])

  names = ["ar", *SETTINGS]
  for name in names:  # warm-up: each setting's programs compiled before the timed repeats
    generate(name)
  rows = []
  for r in range(_REPEATS.value):
    order = names[:1] + (list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1])
    got = {name: generate(name) for name in order}
    for name, g in got.items():
      windows = g.stats.get("window_log", [])
      rows.append(dict(repeat=r, setting=name, decode_s=g.decode_s, tokens=g.new_tokens,
                       speedup=got["ar"].decode_s / g.decode_s, windows=len(windows),
                       host_s=[w["host_s"] for w in windows],
                       read_s=[w["read_s"] for w in windows],
                       outside_windows_s=outside_windows_s(g.decode_s, windows),
                       same_as_ar=g.output_ids == got["ar"].output_ids))
    print(f"repeat {r + 1}/{_REPEATS.value}: " + ", ".join(
        f"{row['setting']} {row['decode_s'] * 1e3:.1f} ms ({row['windows']} windows)"
        for row in rows if row["repeat"] == r), flush=True)

  print(f"\n{len(ids)} prompt tokens, {_NEW.value} new, gamma {_GAMMA.value}, interval "
        f"{_INTERVAL.value}, draft {len(draft.skip.attn_skipped)} attn + "
        f"{len(draft.skip.mlp_skipped)} MLP skipped; medians over {_REPEATS.value} repeats\n")
  print("| setting | windows | decode (ms) | tok/s | x AR (paired) | host_s per window (ms) | "
        "of it, the device read (ms) | outside windows (ms) | output AR's |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name in names:
    sel = [row for row in rows if row["setting"] == name]
    med = lambda key: statistics.median(row[key] for row in sel)  # noqa: E731
    host = [h for row in sel for h in row["host_s"]]
    read = [h for row in sel for h in row["read_s"]]
    print(f"| {name} | {med('windows'):g} | {1e3 * med('decode_s'):.1f} | "
          f"{_NEW.value / med('decode_s'):.1f} | {med('speedup'):.3f} | "
          + (f"{1e3 * statistics.median(host):.2f} | {1e3 * statistics.median(read):.2f} | "
             f"{1e3 * med('outside_windows_s'):.1f} | " if host else "– | – | – | ")
          + f"{sum(row['same_as_ar'] for row in sel)}/{len(sel)} |")
  off, on = ({row["repeat"]: row["decode_s"] for row in rows if row["setting"] == name}
             for name in SETTINGS)
  ratios = [off[r] / on[r] for r in on]
  print(f"\nbucket windows over interval windows, paired: {statistics.median(ratios):.4f}x "
        f"(range {min(ratios):.4f}-{max(ratios):.4f})")
  profiled = {}
  if _HOST_PROFILE.value:
    # Per generation, then per extra window: the settings differ only in their windows, so the
    # difference over the difference in windows is what one more window costs the host
    # (a generation's set-up, the same in both, cancels).
    print("\n| setting | windows | " + " | ".join(f"{group}: calls, ms" for group in HOST_GROUPS)
          + " |")
    print("|---|---|" + "---|" * len(HOST_GROUPS))
    for name in SETTINGS:
      profile = cProfile.Profile()
      profile.enable()
      g = generate(name)
      profile.disable()
      profiled[name] = dict(windows=len(g.stats.get("window_log", [])), decode_s=g.decode_s,
                            groups=host_split(profile))
    many, few = sorted(profiled.values(), key=lambda row: -row["windows"])
    extra = many["windows"] - few["windows"]
    if extra:
      profiled["per extra window"] = dict(windows=1, groups={
          group: {k: (many["groups"][group][k] - few["groups"][group][k]) / extra
                  for k in ("calls", "ms")} for group in HOST_GROUPS})
    for name, row in profiled.items():
      print(f"| {name} | {row['windows']} | " + " | ".join(
          f"{v['calls']:.1f}, {v['ms']:.2f}" for v in row["groups"].values()) + " |")
    print("(device reads' ms include the wait for the device; program calls' are their dispatch)")
  if _OUTPUT.value:
    pathlib.Path(_OUTPUT.value).write_text(json.dumps(dict(
        model=model.profile_name, dtype=_DTYPE.value, prompt_tokens=len(ids),
        new_tokens=_NEW.value, gamma=_GAMMA.value, interval=_INTERVAL.value,
        skip=draft.skip.to_list(), rows=rows, host_profile=profiled), indent=1))


if __name__ == "__main__":
  sys.exit(app.run(main))
