"""Benchmarks of flespi-bridge against baselines (issue 8): `python -m bench`."""
