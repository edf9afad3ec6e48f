"""Benchmarks behind ``fcvc bench``; each prints one JSON document with side-by-side ratios."""
