# Source on the device machine after ship_part1.sh: joins the model (if part2 was carried) and
# puts the carried wheels (transformers 5.23 as pinned in setup.py, gguf) first on the path.
if [ -f .model/part2 ] && [ ! -f /root/m/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  cat /root/m/part1 .model/part2 > /root/m/SmolLM2-135M-Instruct.Q4_1.gguf
fi
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export KNAPSPEC_MODEL=/root/m/SmolLM2-135M-Instruct.Q4_1.gguf KNAPSPEC_DATA=$PWD/.data
