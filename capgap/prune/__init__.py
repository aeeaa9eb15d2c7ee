"""Structured pruning: scores → plan → sliced student. `load_pruned(dir)` reloads any student."""

from capgap.prune.slicing import load_pruned

__all__ = ["load_pruned"]
