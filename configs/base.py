"""Every field of a benchmark config, with its default. The other configs start from this one.

  python experiments/benchmark.py --config=configs/base.py --config.methods=ar,knapspec

Lists are comma-separated strings, so that any field can be overridden from the command line
(`--config.long_lengths=2000,4000`).
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  c.name = "base"
  # Model: a GGUF file or HF directory; "" = the bundled SmolLM2-135M-Instruct.
  c.model = ""
  c.dtype = "float32"  # float32 on CPU (XLA:CPU runs bfloat16 far slower), bfloat16 on GPU
  # One-query attention kernel (knapspec_jax.load_model): "" = its default (pallas on a GPU in
  # bfloat16, else xla), or "xla", "pallas", "cudnn".
  c.attention = ""
  # Attention of verify windows: "" = load_model's default (the one-token kernel's where that is
  # "pallas", else xla), or "xla", "pallas" (BENCHMARKS.md 10.13).
  c.window_attention = ""
  # Tokens a draft's LM head scores (knapspec_jax.load_model's draft_vocab): 0 = all of them.
  c.draft_vocab = 0
  # Speculation segments compiled with CUDA graphs over their loops (load_model's segment_graphs):
  # None = its default (on one GPU), or True / False.
  c.segment_graphs = config_dict.placeholder(bool)
  # Latency profile JSON; "" = the stored profile of this device (measured if there is none).
  c.profile = ""
  # Methods, comma-separated; AR always runs first and is every speedup's baseline.
  c.methods = "ar,knapspec,fixed,del,clasp"
  # Per-method settings, comma-separated method.field=value (fields of the method's config),
  # e.g. "knapspec.search_budget=1.0,knapspec.interval=32".
  c.method_options = ""
  c.noise_floor = False  # run AR twice; the rerun ("ar-rerun") shows the run-to-run spread
  # Also time AR alone: the same prompts first, in a child process where no other method runs
  # (its results in <output_dir>/ar_alone/). On the H200 AR ran ~9% slower once other methods'
  # warm-ups had run in its process (BENCHMARKS.md 10.18) until session 21's fix (10.25); each
  # record then also gives its speed over AR alone (speedup_vs_ar_alone), beside the paired ratio
  # to AR in the same process.
  c.ar_alone = False
  # Prompts: the first `specbench_per_category` Spec-Bench questions of each category (or of
  # `categories` only), then long-context summarization documents of `long_lengths` tokens.
  c.specbench_per_category = 1
  c.categories = ""
  c.long_lengths = "2000,4000,6500"
  # documents of each length that share no article (datasets.long_documents): more than one asks
  # whether what KnapSpec learned on one document (kept drafts, search gains) serves the next
  c.long_documents = 1
  c.max_new_tokens = 128
  c.long_max_new_tokens = 0  # tokens for the long-context prompts; 0 = max_new_tokens
  c.ignore_eos = True  # generate exactly max_new_tokens
  c.repeats = 1  # timed runs per (method, prompt); the median is kept
  c.long_repeats = 0  # timed runs per long-context prompt; 0 = repeats
  c.warmup_runs = 1  # untimed runs per (method, prompt) first (first-execution costs)
  # results.jsonl, table.md, config.json and plots/*.png go here; "" = a new folder
  # results/tmp/<name>-<time>/. A folder holding files is refused without --overwrite.
  c.output_dir = ""
  c.plots = True
  return c
