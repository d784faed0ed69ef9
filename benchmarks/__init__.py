"""Benchmarks of sklearn_lse: ``python -m benchmarks --quick`` (or ``--full``)."""
