"""Benchmarks: scripts that measure and print ratios against a baseline in the same run."""
