"""Reproducible benchmarks: ``framepool bench pipeline`` (results in docs/benchmarks.md)."""
