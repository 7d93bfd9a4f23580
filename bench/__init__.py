"""Benchmarks of cj-health-exporter: `python -m bench.seed`, `python -m bench.poll`.

Not part of the wheel and not run in CI (too slow), except the tiny-scale smoke test in
tests/db/test_bench_seed.py. See docs/performance.md.
"""
