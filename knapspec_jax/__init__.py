"""knapspec_jax: KnapSpec self-speculative decoding in JAX.

  import knapspec_jax as ks
  model = ks.load_model()                               # bundled SmolLM2-135M-Instruct
  result = ks.generate(model, "Hi!", 64, method="knapspec")
  print(result.text, result.tokens_per_s)

The public API is what this module exports: load_model, encode_prompt and generate with their
Model and GenerationResult; each method's frozen config (KnapSpecConfig, FixedConfig,
DelConfig, ClaspConfig; available_methods() lists the methods); SkipMask, which sublayers a
draft skips; LatencyProfile and Decision, what KnapSpec decides with and what it decided; and
the errors, each a ValueError that names the problem. The modules beneath (knapsack,
selection, latency, decoding, ...) are the research layer that the notebooks in colab/ use.
"""

from knapspec_jax.api import GenerationResult, Model, encode_prompt, generate, load_model
from knapspec_jax.api import methods as available_methods
from knapspec_jax.checkpoint import CheckpointError
from knapspec_jax.config import ModelConfig, UnsupportedModelError
from knapspec_jax.decoding import PromptError
from knapspec_jax.latency import LatencyProfile
from knapspec_jax.methods import ClaspConfig, DelConfig, FixedConfig, KnapSpecConfig, MethodError
from knapspec_jax.sampling import SamplingConfig, SamplingError
from knapspec_jax.selection import Decision
from knapspec_jax.skip_mask import SkipMask, SkipMaskError

__all__ = [
    "CheckpointError", "ClaspConfig", "Decision", "DelConfig", "FixedConfig", "GenerationResult",
    "KnapSpecConfig", "LatencyProfile", "MethodError", "Model", "ModelConfig", "PromptError",
    "SamplingConfig", "SamplingError",
    "SkipMask", "SkipMaskError", "UnsupportedModelError", "available_methods", "encode_prompt",
    "generate", "load_model",
]
