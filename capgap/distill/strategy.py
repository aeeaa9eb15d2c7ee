"""What a distillation strategy adds to the plain KD loop, and the shape of its loss terms.

DistillModule computes α·CE + β·T²·KD and adds whatever the strategies hand it: weighted loss
terms (intermediate matching, a progressive stage's MSE), at most one example selector (hard
mining), and Lightning callbacks that change weights or gradients as training goes
(progressive). Each strategy file has `from_config(d, student, teacher, total_steps)` reading
its own part of the `distill` node; capgap.distill.config collects them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


class Term(nn.Module):
    """One addend of the loss, `weight · term(student_out, teacher_out, mask)`.

    The outputs are the base models' HF outputs with the fields named in `needs`
    ("hidden_states", "attentions"); mask [B, L] is true where a position counts. A weight of
    0 skips the term (and, if nothing else needs it, the teacher forward): callbacks switch
    terms on and off by changing it. Parameters of a term (projections) are trained and
    checkpointed with the student.
    """

    needs: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)


@dataclass
class Strategy:
    terms: dict[str, Term] = field(default_factory=dict)
    # (student_out, teacher_out, student_head, teacher_head, labels) -> (labels, logged parts)
    select: Callable | None = None
    callbacks: list = field(default_factory=list)
