"""Progressive layer-by-layer distillation: the schedule (distill.progressive).

The student's n blocks are split bottom-up into `stages` groups of (nearly) equal size. During
stage i only the blocks of groups ≤ i (plus embeddings) train; stage i < last is trained on the
hidden-state MSE between the top trainable block and its uniformly mapped teacher block, the last
stage on the normal distillation loss over the whole model. Stage boundaries are shares of the
total steps: equal by default, or `fractions` (one per stage, summing to 1).

The schedule is pure functions of integers; ProgressiveDistillation, a Lightning Callback,
applies it: each early stage's MSE is a loss term of the DistillModule, switched on by weight
for its stage, and the upper blocks are frozen by dropping their gradients. (Lightning's
BaseFinetuning unfreezes per epoch; these stages are shares of the steps, often in one epoch.)
"""

from __future__ import annotations

import lightning as L

from capgap.distill.intermediate import HiddenStateMSE, layer_map, width
from capgap.distill.strategy import Strategy
from capgap.models.adapters import adapter_for
from capgap.runtime.errors import CapgapError


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


def term_name(stage: int) -> str:
    return f"progressive{stage}"


class ProgressiveDistillation(L.Callback):
    """Sets, before each training batch, which loss terms count (the stage's MSE, or in the last
    stage every other term and the KD loss at their configured weights) and, before each
    optimizer step, drops the gradients of the blocks above the stage's groups."""

    def __init__(self, stages: int, total_steps: int, fractions=None):
        self.stages, self.total_steps, self.fractions = stages, total_steps, fractions
        self.stage = 0
        self._weights = None  # the other terms' configured weights, restored in the last stage

    def apply(self, module, stage: int) -> None:
        """Make `module` compute stage `stage`'s loss."""
        if self._weights is None:
            self._weights = {n: t.weight for n, t in module.terms.items()}
        self.stage = stage
        last = stage == self.stages - 1
        module.kd_on = last
        for name, term in module.terms.items():
            if name.startswith("progressive"):
                term.weight = float(name == term_name(stage))
            else:
                term.weight = self._weights[name] if last else 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.apply(module, stage_at(trainer.global_step, self.total_steps, self.stages, self.fractions))
        module.log("train/stage", float(self.stage))  # a Python number: no device sync

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.stage == self.stages - 1:
            return
        blocks = adapter_for(module.model).layers()
        for l, block in enumerate(blocks):
            if group_of(l, len(blocks), self.stages) > self.stage:
                # grad None (not zero): AdamW then skips the parameter, weight decay included
                for p in block.parameters():
                    p.grad = None


def from_config(d, student, teacher, total_steps: int) -> Strategy:
    """distill.progressive: one single-pair hidden MSE (with its own projection where widths
    differ) per early stage, and the callback that schedules them."""
    node = d.get("progressive") or {}
    stages = int(node.get("stages") or 0)
    fractions = list(node["fractions"]) if node.get("fractions") else None
    if not stages:
        return Strategy()
    n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
    check(stages, n_s, fractions)
    if stages == 1:
        return Strategy()  # one stage is the plain loss over the whole model
    to_teacher = dict(layer_map(n_s, n_t, "uniform"))
    terms = {}
    for i in range(stages - 1):
        h = top_layer(i, n_s, stages)
        terms[term_name(i)] = HiddenStateMSE([(h, to_teacher[h])], width(student), width(teacher), weight=0.0)
    return Strategy(terms=terms, callbacks=[ProgressiveDistillation(stages, total_steps, fractions)])
