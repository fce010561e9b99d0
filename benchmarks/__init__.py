"""Benchmarks: each writes its section of benchmarks/results/latest.json (see results.py)."""
