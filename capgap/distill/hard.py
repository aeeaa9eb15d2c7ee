"""Hard-example mining: train each step on the sequences of the batch where the student lags the
teacher most, gap = student CE − teacher CE per sequence (distill.data_strategy.name=hard).

The gap is measured on the batch itself (no_grad, from the hidden states the step computes
anyway), so it is always fresh; the other sequences' labels become IGNORE, which drops them
from every loss term (CE, KD and the intermediate ones) without touching the chunked loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capgap.data.blocks import IGNORE
from capgap.distill.strategy import Strategy
from capgap.models.lm_loss import shift_labels
from capgap.runtime.errors import CapgapError


@torch.no_grad()
def sequence_ce(hidden: torch.Tensor, head, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE per sequence from hidden states [B, L, H] through the LM head, aligned targets
    [B, L]; one sequence's logits at a time, so the batch's logits never exist at once."""
    out = []
    for h, y in zip(hidden, targets):
        logits = F.linear(h, head.weight, head.bias).float()
        valid = y != IGNORE
        ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
        out.append((ce * valid).sum() / valid.sum().clamp(min=1))
    return torch.stack(out)


def hardest(gap: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask [B] of the round(fraction·B) sequences with the largest gap; at least one."""
    k = max(1, round(fraction * len(gap)))
    keep = torch.zeros(len(gap), dtype=torch.bool, device=gap.device)
    keep[torch.topk(gap, k).indices] = True
    return keep


class HardExamples:
    """The example selector DistillModule calls after both forwards: labels of all but the
    hardest sequences become IGNORE; logs the kept sequences' mean gap."""

    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise CapgapError(f"distill.data_strategy.fraction={fraction} must be in (0, 1]")
        self.fraction = fraction

    def __call__(self, student_out, teacher_out, student_head, teacher_head, labels):
        targets = shift_labels(labels)
        gap = (sequence_ce(student_out.last_hidden_state, student_head, targets)
               - sequence_ce(teacher_out.last_hidden_state, teacher_head, targets))
        keep = hardest(gap, self.fraction)
        return labels.masked_fill(~keep[:, None], IGNORE), {"hard_gap": gap[keep].mean()}


def from_config(d, student, teacher, total_steps: int) -> Strategy:
    """distill.data_strategy.name=hard (the other data strategies are capgap.data.transfer's)."""
    node = d.get("data_strategy") or {}
    if node.get("name") != "hard":
        return Strategy()
    return Strategy(select=HardExamples(float(node.get("fraction", 0.5))))
