"""Progressive layer-by-layer distillation: the schedule (distill.progressive).

The student's n blocks are split bottom-up into `stages` groups of (nearly) equal size. During
stage i only the blocks of groups ≤ i (plus embeddings) train; stage i < last is trained on the
hidden-state MSE between the top trainable block and its uniformly mapped teacher block, the last
stage on the normal distillation loss over the whole model. Stage boundaries are shares of the
total steps: equal by default, or `fractions` (one per stage, summing to 1).

Everything here is a pure function of integers; DistillModule applies it.
"""

from __future__ import annotations

from capgap.errors import CapgapError


def check(stages: int, n_layers: int, fractions=None) -> None:
    if not 1 <= stages <= n_layers:
        raise CapgapError(f"distill.progressive.stages={stages} must be between 1 and the student's "
                          f"{n_layers} layers (0 or null: off)")
    if fractions is not None:
        if len(fractions) != stages or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise CapgapError(f"distill.progressive.fractions={list(fractions)} needs {stages} positive "
                              "shares of the steps summing to 1")


def stage_at(step: int, total_steps: int, stages: int, fractions=None) -> int:
    """The stage (0-based) that optimizer step `step` (0-based) belongs to."""
    if fractions is None:
        return min(stages - 1, step * stages // max(1, total_steps))
    done = 0.0
    for i, f in enumerate(fractions[:-1]):
        done += f
        if step < round(done * total_steps):
            return i
    return stages - 1


def group_of(layer: int, n_layers: int, stages: int) -> int:
    """Group (0-based, bottom-up) of block `layer` (0-based); lower groups are never smaller."""
    return layer * stages // n_layers


def trainable_layers(stage: int, n_layers: int, stages: int) -> list[int]:
    """Block indices (0-based) that train during `stage`: those in groups ≤ stage."""
    return [l for l in range(n_layers) if group_of(l, n_layers, stages) <= stage]


def top_layer(stage: int, n_layers: int, stages: int) -> int:
    """The hidden-state index (HF numbering: 0 embeddings, l the output of block l) of the top
    trainable block during `stage`: where the stage's MSE is taken."""
    return trainable_layers(stage, n_layers, stages)[-1] + 1
