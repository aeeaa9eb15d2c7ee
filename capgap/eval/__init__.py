"""Evaluation beyond held-out loss: downstream benchmarks (capgap.eval.harness)."""
