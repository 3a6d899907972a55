"""Benchmarks: this trainer against TRL's GRPOTrainer, the per-step overhead breakdown, the
advantage kernel and learning curves. Run with `python -m benchmarks.<name>` from the repo
root (docs/benchmarks.md has the commands and the measured numbers)."""
