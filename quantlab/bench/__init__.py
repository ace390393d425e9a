"""Benchmarks: speed and quality measurements, printed as ratios against references timed in the same run."""
