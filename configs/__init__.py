"""Benchmark configurations: each module's get_config() is loaded by
`experiments/benchmark.py --config=configs/<name>.py` (ml_collections.config_flags)."""
