#!/usr/bin/env bash
# Device machine (nvidia-h200), repo root, with the Qwen2.5-Coder-1.5B-Instruct GGUF at
# $QWEN_GGUF: every method (ar, ar-rerun, knapspec, fixed, del, clasp) on the prompts of
# configs/h200_qwen.py (3 Spec-Bench prompts, 2K / 8K documents, 256 new tokens, warm-up + 3
# timed runs each), in one process. About 6 minutes; BENCH_TIMEOUT (s) bounds it.
#   QWEN_GGUF=/path/to/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf bash experiments/gpu/run_qwen.sh
# Writes results/h200_qwen/<time>/ (results.jsonl flushed per record, table.md, config.json,
# plots/, ar_alone/) and copies its records and table to $OUT/h200_qwen/, with a Qwen
# latency profile this run measured (none was in profiles/) and the log as $OUT/run_qwen.log.
set -uo pipefail
: "${QWEN_GGUF:?set QWEN_GGUF to the Qwen2.5-Coder-1.5B-Instruct GGUF}"
: "${OUT:?set OUT to the folder whose contents come back}"
[ -f "$QWEN_GGUF" ] || { echo "no file at QWEN_GGUF=$QWEN_GGUF"; exit 2; }
mkdir -p "$OUT"  # OUT=$OUT/arm: the log's tee needs the folder (session 38 lost six logs)
if [ -d /root/site ]; then  # the carried wheels (wheels.sh install), if this machine has them
  source experiments/gpu/env.sh
else
  export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
fi
export QWEN_GGUF
dir=results/h200_qwen/$(date +%Y%m%d-%H%M%S)
started=$(mktemp)  # profiles written after this were measured by this run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout ${BENCH_TIMEOUT:-450} python3 experiments/benchmark.py --config=configs/h200_qwen.py \
  --config.output_dir=$dir "$@" 2>&1 | grep -v -i warn | tee $OUT/run_qwen.log \
  | grep -v "^|"
# At most 8 files come back: the records, the table, AR alone's records (config.ar_alone), the
# log, and only the profiles this run measured or changed (the committed ones stay behind).
mkdir -p $OUT/h200_qwen
cp $dir/results.jsonl $dir/table.md $OUT/h200_qwen/ 2>/dev/null
if [ -f $dir/ar_alone/results.jsonl ]; then
  mkdir -p $OUT/h200_qwen/ar_alone && cp $dir/ar_alone/results.jsonl $OUT/h200_qwen/ar_alone/
fi
find profiles -name '*[Qq]wen*.json' -newer $started -exec cp {} $OUT/ \;
tail -n 40 $dir/table.md 2>/dev/null
ls $OUT $OUT/h200_qwen
