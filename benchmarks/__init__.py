"""Benchmarks of the advantage backends (`tempo-rl bench`)."""
