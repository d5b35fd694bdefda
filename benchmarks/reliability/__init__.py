"""The reliability probe (issue 18), split by class; benchmarks/reliability_probe.py runs it."""
