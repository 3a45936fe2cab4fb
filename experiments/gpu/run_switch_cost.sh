#!/usr/bin/env bash
# Device machine, nothing to carry (random weights): what switching to a new skip set costs on
# the Qwen2.5-1.5B shape, static masks against run-time gating (ModelConfig.draft_skip; issue 13
# item 5), with XLA's defaults and with command buffers (CUDA graphs) taking in conditionals and
# while loops (without them each lax.cond waits for its predicate on the host). About 4 minutes.
# -> $OUT/switch_cost/<flag set>.json
# FLAG_SETS="default command_buffer_conds" bash experiments/gpu/run_switch_cost.sh: conditionals
# alone in the graphs (with_xla_flag_sets.sh)
# FLAG_SETS="default no_command_buffers" bash experiments/gpu/run_switch_cost.sh \
#   --modes=dispatch,dispatch_layers: whether the dispatched draft's 79-114 us per call
#   (BENCHMARKS.md 10.22) is CUDA graphs being updated for another layer's buffers
bash experiments/gpu/with_xla_flag_sets.sh switch_cost.py switch_cost 170 "$@"
