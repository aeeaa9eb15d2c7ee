"""A DistillModule from a `distill` config node (conf/distill/*.yaml).

The loss and optimiser settings are read here; every other part of the node belongs to a
strategy, which reads it in its own file and says what it adds (capgap.distill.strategy).
Adding a strategy is a file, a config, and its entry in STRATEGIES.
"""

from __future__ import annotations

from capgap.distill import hard, intermediate, progressive
from capgap.distill.losses import get_kd_loss
from capgap.distill.module import DistillModule, teacher_dtype
from capgap.runtime.errors import CapgapError

STRATEGIES = (intermediate.from_config, progressive.from_config, hard.from_config)


def optim_settings(d) -> dict:
    """CausalLMModule's optimiser and schedule keywords from a distill node."""
    return dict(lr=d.lr, betas=tuple(d.betas), weight_decay=d.weight_decay,
                warmup_fraction=d.warmup_fraction, min_lr_ratio=d.min_lr_ratio)


def from_config(student, teacher, d, total_steps: int, log_every: int = 10) -> DistillModule:
    terms, selects, callbacks = {}, [], []
    for make in STRATEGIES:
        s = make(d, student, teacher, total_steps)
        terms.update(s.terms)
        selects += [s.select] if s.select else []
        callbacks += s.callbacks
    if len(selects) > 1:
        raise CapgapError("distill: more than one example selection asked for; choose one")
    return DistillModule(student, teacher, get_kd_loss(**d.loss), chunk_size=d.chunk_size,
                         teacher_dtype=teacher_dtype(d.get("teacher_dtype")), terms=terms,
                         select=selects[0] if selects else None, callbacks=callbacks,
                         total_steps=total_steps, log_every=log_every, **optim_settings(d))
