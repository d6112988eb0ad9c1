"""Evaluation: models x benchmarks x modes, metrics, report, plots, parallel workers."""
