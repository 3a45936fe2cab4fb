#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): where a speculation round's time goes on
# the Qwen2.5-1.5B shape (issue 13; BENCHMARKS.md 10.6 found rounds 0.8-2.3 ms over the
# profile's parts), with XLA's defaults and with command buffers (CUDA graphs) extended to
# while loops and conditionals, whose absence would cost each nested loop its graphs.
# About 4 minutes. -> $OUT/round_terms/<flag set>.json
bash experiments/gpu/with_xla_flag_sets.sh round_terms.py round_terms 130 "$@"
