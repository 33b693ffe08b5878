"""Benchmarks and the demo: static and stream protocols, the suite table, and the quick demo."""
