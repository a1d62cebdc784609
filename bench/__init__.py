"""Benchmarks of the campus edge agent: each prints a table and writes results/<name>.json."""
