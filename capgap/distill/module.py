"""DistillModule: the plain LM training loop with the loss swapped for distillation.

total = alpha·CE(labels) + kd_weight·T²·D(teacher, student) + Σ weight_k·term_k

The teacher is frozen, in eval mode, run under `torch.no_grad()` (not inference_mode: its
hidden states feed the terms' graphs) and kept in a tuple, so it is not a submodule:
Lightning neither optimises it nor writes it into checkpoints. It follows the student to its
device at the start of fit/validation, optionally cast to a lower precision. The KD term
comes from the final hidden states through each LM head a chunk of tokens at a time
(capgap.distill.chunked), so full-vocabulary logits of the batch never exist in training.

Strategies (capgap.distill.strategy) plug in without changing this file: loss terms
(intermediate matching, progressive stages), an example selector (hard mining) and callbacks
(the progressive schedule), built from the config by capgap.distill.config.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric

from capgap.data.blocks import IGNORE
from capgap.distill.chunked import CHUNK_SIZE, chunked_kd_loss
from capgap.distill.losses import KDLoss, shift_labels
from capgap.errors import CapgapError
from capgap.lm_module import CausalLMModule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_vocabularies(teacher, student) -> None:
    """The one vocabulary check: every path to a distillation (pruned, scratch, student.path,
    chain stages) builds a DistillModule."""
    t, s = vocab_size(teacher), vocab_size(student)
    if t != s:
        raise CapgapError(f"teacher vocabulary has {t} tokens but the student's has {s}: KD compares "
                          "the two next-token distributions, so both need the same tokenizer")


def teacher_dtype(name):
    if name in (None, "null", "none"):
        return None
    if name not in DTYPES:
        raise CapgapError(f"distill.teacher_dtype={name} is not one of {', '.join(DTYPES)} (or null)")
    return DTYPES[name]


class DistillModule(CausalLMModule):
    def __init__(self, student, teacher, loss: KDLoss | None = None, chunk_size: int = CHUNK_SIZE,
                 teacher_dtype: torch.dtype | None = None, terms=None, select=None, callbacks=(),
                 **optim):
        super().__init__(student, **optim)
        check_vocabularies(teacher, student)
        self.kd_loss = loss or KDLoss()
        self.chunk_size = chunk_size
        teacher.eval().requires_grad_(False)
        if teacher_dtype is not None:
            teacher.to(teacher_dtype)
        self._teacher = (teacher,)  # a tuple hides it from nn.Module: no state_dict, no optimiser
        # submodules: their parameters (projections of a narrower student) are checkpointed and optimised
        self.terms = nn.ModuleDict(terms or {})
        self.select = select
        self.kd_on = True  # the α·CE + β·KD loss; a schedule (progressive) turns it off for a while
        self._callbacks = list(callbacks)
        if any("attentions" in t.needs for t in self.terms.values()):
            # attention probabilities exist only with eager attention
            for m in (student, teacher):
                m.set_attn_implementation("eager")
        self.teacher_val = MeanMetric()
        self._teacher_val_losses: dict[int, float] = {}  # per validation-set size: computed once
        self._teacher_val_pending = False

    @property
    def teacher(self):
        return self._teacher[0]

    @property
    def uses_teacher(self) -> bool:
        """False for the CE-only baseline (alpha 1, no KD or other term): no teacher forward."""
        return bool((self.kd_on and self.kd_loss.kd_weight) or self.select
                    or any(t.weight for t in self.terms.values()))

    def extra_parameters(self):
        return list(self.terms.parameters())

    def configure_callbacks(self):
        return self._callbacks

    def _place_teacher(self):
        t = self.teacher
        if next(t.parameters()).device != self.device:
            t.to(self.device)

    def on_fit_start(self):
        self._place_teacher()
        # a student sliced from a loaded teacher arrives in eval mode; Lightning keeps the mode
        # it finds, and training wants dropout where the architecture has it
        self.model.train()

    def on_validation_start(self):
        self._place_teacher()

    # -- training loss --
    def compute_loss(self, batch) -> dict[str, torch.Tensor]:
        if not self.uses_teacher:
            return super().compute_loss(batch)
        ids, labels = batch["input_ids"], batch["labels"]
        terms = {name: t for name, t in self.terms.items() if t.weight}
        kw = {f"output_{field}": True for t in terms.values() for field in t.needs}
        # base_model: the final hidden states (after the final norm), without the full logits
        s = self.model.base_model(input_ids=ids, **kw)
        with torch.no_grad():
            t = self.teacher.base_model(input_ids=ids, **kw)
        s_head, t_head = self.model.get_output_embeddings(), self.teacher.get_output_embeddings()
        parts = {}
        if self.select is not None:
            labels, logged = self.select(s, t, s_head, t_head, labels)
            parts.update(logged)
        total = 0.0
        if self.kd_on:
            out = chunked_kd_loss(s.last_hidden_state, s_head, t.last_hidden_state, t_head,
                                  shift_labels(labels), self.kd_loss, self.chunk_size)
            parts.update(ce=out.ce, kd=out.kd)
            total = out.loss
        mask = labels != IGNORE  # positions holding a real token (padding excluded)
        for name, term in terms.items():
            parts[name] = term(s, t, mask)
            total = total + term.weight * parts[name]
        parts["loss"] = total
        return parts

    # -- held-out evaluation: the student's loss every time, the teacher's once per split --
    def on_validation_epoch_start(self):
        self._teacher_val_pending = self._val_key() not in self._teacher_val_losses

    def _val_key(self) -> int:
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        if self._teacher_val_pending:
            out = self.teacher(input_ids=batch["input_ids"], labels=batch["labels"])
            self.teacher_val.update(out.loss.float(), (batch["labels"][:, 1:] != IGNORE).sum())

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        key = self._val_key()
        if self._teacher_val_pending:
            self._teacher_val_losses[key] = float(self.teacher_val.compute())
            self.teacher_val.reset()
            self._teacher_val_pending = False
        # logged at every evaluation (a flat reference line), computed only once
        self.log("val/teacher_loss", self._teacher_val_losses[key])
