"""DistillModule: the plain LM training loop with the loss swapped for distillation.

total = alpha·CE(labels) + kd_weight·T²·D(teacher, student) + Σ weight_k·term_k

The teacher is frozen, in eval mode, run under `torch.no_grad()` (not inference_mode: its
hidden states feed the terms' graphs) and kept in a tuple, so it is not a submodule:
Lightning neither optimises it nor writes it into checkpoints. It follows the student to its
device at the start of fit/validation, in bf16 when training is bf16, mixed or true
(distill.teacher_dtype overrides). Its held-out loss is logged by capgap.distill.teacher_eval.
The KD term comes from the final hidden states through each LM head a chunk of tokens at a
time (capgap.distill.chunked), so full-vocabulary logits of the batch never exist in training.

Strategies (capgap.distill.strategy) plug in without changing this file: loss terms
(intermediate matching, progressive stages), an example selector (hard mining) and callbacks
(the progressive schedule), built from the config by capgap.distill.config.
"""

from __future__ import annotations

import torch
from torch import nn

from capgap.data.blocks import IGNORE
from capgap.distill.chunked import chunked_kd_loss
from capgap.distill.losses import KDLoss
from capgap.distill.teacher_eval import TeacherValidation
from capgap.models.lm_loss import CHUNK_SIZE, shift_labels
from capgap.pretrain.lm_module import CausalLMModule
from capgap.runtime import sharding
from capgap.runtime.errors import CapgapError
from capgap.runtime.training import precision_dtype

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
        super().__init__(student, chunk_size=chunk_size, **optim)
        check_vocabularies(teacher, student)
        self.kd_loss = loss or KDLoss()
        teacher.eval().requires_grad_(False)
        self.teacher_dtype = teacher_dtype  # None: follow the trainer's precision at fit
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

    @property
    def sits_out(self) -> bool:
        """Whether some parameters get no gradient in some steps (a callback switches terms off
        and freezes blocks: progressive stages), which DDP must be told to look for."""
        return bool(self._callbacks)

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

    def flops_per_token(self) -> int:
        """6·N_S + 2·N_T per trained token: the student's forward and backward, the teacher's forward."""
        n_t = sum(p.numel() for p in self.teacher.parameters()) if self.uses_teacher else 0
        return super().flops_per_token() + 2 * n_t

    def _place_teacher(self):
        """The teacher on the student's device, in bf16 (fp16) when training is bf16 (fp16),
        mixed or true: the forward that autocast (or the 16-bit student) would run in that
        precision anyway, at half the memory. distill.teacher_dtype overrides."""
        t, dtype = self.teacher, self.teacher_dtype
        if dtype is None and self._trainer is not None:
            dtype = precision_dtype(self.trainer.precision)
        p = next(t.parameters())
        if p.device != self.device or (dtype is not None and p.dtype != dtype):
            t.to(device=self.device, dtype=dtype)
        if self._trainer is not None and sharding.is_sharded(self.trainer.strategy):
            # under trainer=fsdp the teacher is sharded too, once placed and cast (sharding casts nothing)
            sharding.shard_teacher(t, self.device_mesh["data_parallel"])

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

    # -- held-out evaluation: the student's by CausalLMModule, the teacher's by a callback --
    def configure_callbacks(self):
        # the strategies' callbacks (the progressive schedule) and teacher validation, one
        # instance for the module's life: its per-split cache spans fit and the final validate
        if getattr(self, "_teacher_validation", None) is None:
            self._teacher_validation = TeacherValidation(self.chunk_size)
        if self._trainer is not None and self._teacher_validation in self.trainer.callbacks:
            return []  # the final validate on the fit's trainer: it holds these already
        return [*self._callbacks, self._teacher_validation]
