"""Command-line programs of the lab: studies and benchmarks."""
