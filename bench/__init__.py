"""Benchmarks that print ratios measured in one run against a baseline (see DESIGN.md)."""
