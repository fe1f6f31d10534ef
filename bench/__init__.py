"""Benchmarks of the appliance, run from the repository root with `python -m`."""
