"""Model shapes the GPU scripts time with random weights (decode_kernels.py, round_terms.py,
first_call.py), and skip sets spread over them."""

import numpy as np

from knapspec_jax.config import ModelConfig

SHAPES = {
    "smollm2": ModelConfig(arch="llama", vocab_size=49152, d_model=576, d_ff=1536, n_layers=30,
                           n_heads=9, n_kv_heads=3, head_dim=64, rope_theta=100000.0,
                           tie_embeddings=True, max_seq_len=8192),
    "qwen2.5-1.5b": ModelConfig(arch="qwen2", vocab_size=151936, d_model=1536, d_ff=8960,
                                n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                                rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True,
                                max_seq_len=32768, qkv_bias=True),
    # --smoke: the same code paths at toy sizes (2 layers, 9 splits of cache)
    "tiny": ModelConfig(arch="qwen2", vocab_size=256, d_model=64, d_ff=128, n_layers=2,
                        n_heads=4, n_kv_heads=2, head_dim=32, max_seq_len=2048, qkv_bias=True),
}


def spread(n_layers: int, count: int) -> list[int]:
  """`count` inner layers (1 .. n_layers - 2; every layer where there are too few) spread
  evenly."""
  pool = np.arange(1, n_layers - 1) if count <= n_layers - 2 else np.arange(n_layers)
  picks = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)
  return sorted({int(pool[i]) for i in picks})
