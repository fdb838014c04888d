"""Benchmarks and hardware checks run as scripts (`python -m bench.<name>`); not part of the installed package."""
