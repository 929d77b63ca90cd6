"""Benchmarks run by `tools/bench NAME` (tools/benchmarks/NAME.py, `main(argv)`)."""
