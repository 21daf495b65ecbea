"""Offline labelled images and photographs for the demo, tests and benchmarks."""
