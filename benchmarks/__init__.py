"""Benchmarks: each prints a table from one run on this machine and writes it to docs/benchmarks.md."""
