"""Benchmarks: scripts that print figures and ratios taken in one run (never timed asserts in tests)."""
