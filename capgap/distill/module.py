"""DistillModule: the plain LM training loop with the loss swapped for distillation.

total = alpha·CE(labels) + kd_weight·T²·D(teacher, student) + γ_hidden·MSE + γ_attention·KL

The teacher is frozen, in eval mode, run under `torch.no_grad()` (not inference_mode: its
hidden states feed the intermediate losses' graphs) and kept in a tuple, so it is not a
submodule: Lightning neither optimises it nor writes it into checkpoints. It follows the
student to its device at the start of fit/validation, in bf16 when training is bf16-mixed
(distill.teacher_dtype overrides). Its held-out loss is logged by capgap.distill.teacher_eval.
The KD term comes from the final hidden states through each LM head a chunk of tokens at a
time (capgap.distill.chunked), so full-vocabulary logits of the batch never exist in training.
With distill.progressive, early stages train only the lower blocks on one hidden-state MSE
(capgap.distill.progressive); the last stage is the loss above.
"""

from __future__ import annotations

import torch

from capgap.distill import progressive as prog
from capgap.distill.chunked import CHUNK_SIZE, chunked_kd_loss
from capgap.distill.hard import hardest, sequence_ce
from capgap.distill.intermediate import HiddenStateMSE, attention_kl, layer_map
from capgap.distill.losses import IGNORE, KDLoss, get_kd_loss, shift_labels
from capgap.distill.teacher_eval import TeacherValidation
from capgap.errors import CapgapError
from capgap.lm_module import CausalLMModule
from capgap.models.adapters import adapter_for

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_vocabularies(teacher, student) -> None:
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
                 teacher_dtype: torch.dtype | None = None, hidden_weight: float = 0.0,
                 attention_weight: float = 0.0, mapping: str = "uniform", k: int | None = None,
                 pairs=None, hard_fraction: float | None = None, progressive_stages: int = 0,
                 progressive_fractions=None, **optim):
        super().__init__(student, **optim)
        check_vocabularies(teacher, student)
        self.kd_loss = loss or KDLoss()
        self.chunk_size = chunk_size
        teacher.eval().requires_grad_(False)
        self.teacher_dtype = teacher_dtype  # None: follow the trainer's precision at fit
        if teacher_dtype is not None:
            teacher.to(teacher_dtype)
        self._teacher = (teacher,)  # a tuple hides it from nn.Module: no state_dict, no optimiser
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.hard_fraction = hard_fraction  # hard-example mining: share of each batch trained on
        self.layer_pairs = None
        self.hidden_loss = None
        if hidden_weight or attention_weight:
            self.layer_pairs = layer_map(student.config.num_hidden_layers,
                                         teacher.config.num_hidden_layers, mapping, k, pairs)
        if hidden_weight:
            # a submodule: its projections (narrower student) are checkpointed and optimised
            self.hidden_loss = HiddenStateMSE(self.layer_pairs, _width(student), _width(teacher))
        if attention_weight:
            # attention probabilities exist only with eager attention
            for m in (student, teacher):
                m.set_attn_implementation("eager")
        self.stages, self.stage_fractions = progressive_stages or 0, progressive_fractions
        self.progressive_loss = None
        if self.stages:
            self._setup_progressive(student, teacher)

    @property
    def teacher(self):
        return self._teacher[0]

    @property
    def uses_teacher(self) -> bool:
        """False for the CE-only baseline (alpha 1, no KD or intermediate term): no teacher forward."""
        return bool(self.kd_loss.kd_weight or self.hidden_weight or self.attention_weight or self.hard_fraction
                    or self.stages > 1)

    def extra_parameters(self):
        return [p for m in (self.hidden_loss, self.progressive_loss) if m is not None for p in m.parameters()]

    # -- progressive layer-by-layer distillation (capgap.distill.progressive) --
    def _setup_progressive(self, student, teacher):
        n_s, n_t = student.config.num_hidden_layers, teacher.config.num_hidden_layers
        prog.check(self.stages, n_s, self.stage_fractions)
        # a tuple: a ModuleList attribute would register the blocks twice in state_dict
        self._blocks = tuple(adapter_for(student).layers())
        to_teacher = dict(layer_map(n_s, n_t, "uniform"))
        # one single-pair MSE (with its own projection where widths differ) per early stage
        self.progressive_loss = torch.nn.ModuleList(
            HiddenStateMSE([(h, to_teacher[h])], _width(student), _width(teacher))
            for h in (prog.top_layer(i, n_s, self.stages) for i in range(self.stages - 1)))

    def stage(self) -> int:
        return prog.stage_at(self.global_step, self.total_steps, self.stages, self.stage_fractions)

    def on_before_optimizer_step(self, optimizer):
        if self.stages > 1:
            # grad None (not zero): AdamW then skips the parameter, weight decay included
            n, i = len(self._blocks), self.stage()
            for l, block in enumerate(self._blocks):
                if prog.group_of(l, n, self.stages) > i:
                    for p in block.parameters():
                        p.grad = None
        super().on_before_optimizer_step(optimizer)

    def flops_per_token(self) -> int:
        """6·N_S + 2·N_T per trained token: the student's forward and backward, the teacher's forward."""
        n_t = sum(p.numel() for p in self.teacher.parameters()) if self.uses_teacher else 0
        return super().flops_per_token() + 2 * n_t

    def _place_teacher(self):
        """The teacher on the student's device, in bf16 (fp16) when training is bf16 (fp16)
        mixed precision: the forward that autocast would run in that precision anyway, at half
        the memory. distill.teacher_dtype overrides."""
        t, dtype = self.teacher, self.teacher_dtype
        if dtype is None and self._trainer is not None:
            precision = str(self.trainer.precision)
            dtype = torch.bfloat16 if precision.startswith("bf16") else (
                torch.float16 if precision.startswith("16") else None)
        p = next(t.parameters())
        if p.device != self.device or (dtype is not None and p.dtype != dtype):
            t.to(device=self.device, dtype=dtype)
        if self._trainer is not None and type(self.trainer.strategy).__name__ == "FSDPStrategy":
            from capgap.sharding import shard_teacher  # under trainer=fsdp the teacher is sharded too

            shard_teacher(t, self.device)

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
        if self.stages > 1 and self.stage() < self.stages - 1:
            return self._stage_loss(batch)
        ids, labels = batch["input_ids"], batch["labels"]
        want_h, want_a = self.hidden_loss is not None, bool(self.attention_weight)
        kw = dict(output_hidden_states=want_h, output_attentions=want_a)
        # base_model: the final hidden states (after the final norm), without the full logits
        s = self.model.base_model(input_ids=ids, **kw)
        with torch.no_grad():
            t = self.teacher.base_model(input_ids=ids, **kw)
        extra = {}
        if self.hard_fraction:
            targets = shift_labels(labels)
            gap = (sequence_ce(s.last_hidden_state, self.model.get_output_embeddings(), targets)
                   - sequence_ce(t.last_hidden_state, self.teacher.get_output_embeddings(), targets))
            keep = hardest(gap, self.hard_fraction)
            labels = labels.masked_fill(~keep[:, None], IGNORE)
            extra["hard_gap"] = gap[keep].mean()
        out = chunked_kd_loss(s.last_hidden_state, self.model.get_output_embeddings(),
                              t.last_hidden_state, self.teacher.get_output_embeddings(),
                              shift_labels(labels), self.kd_loss, self.chunk_size)
        parts = {"ce": out.ce, "kd": out.kd, **extra}
        total = out.loss
        mask = labels != IGNORE  # positions holding a real token (padding excluded)
        if want_h:
            parts["hidden"] = self.hidden_loss(s.hidden_states, t.hidden_states, mask)
            total = total + self.hidden_weight * parts["hidden"]
        if want_a:
            parts["attention"] = attention_kl(s.attentions, t.attentions, self.layer_pairs, mask=mask)
            total = total + self.attention_weight * parts["attention"]
        parts["loss"] = total
        if self.stages > 1:
            parts["stage"] = torch.tensor(float(self.stages - 1), device=total.device)
        return parts

    def _stage_loss(self, batch) -> dict[str, torch.Tensor]:
        """An early stage: MSE between the top trainable student block and its teacher block."""
        i, ids = self.stage(), batch["input_ids"]
        s = self.model.base_model(input_ids=ids, output_hidden_states=True)
        with torch.no_grad():
            t = self.teacher.base_model(input_ids=ids, output_hidden_states=True)
        mse = self.progressive_loss[i](s.hidden_states, t.hidden_states, batch["labels"] != IGNORE)
        return {"loss": mse, "progressive": mse, "stage": torch.tensor(float(i), device=mse.device)}

    # -- held-out evaluation: the student's by CausalLMModule, the teacher's by a callback --
    def configure_callbacks(self):
        # one instance for the module's life: its per-split cache spans fit and the final validate
        if getattr(self, "_teacher_validation", None) is None:
            self._teacher_validation = TeacherValidation(self.chunk_size)
        if self._trainer is not None and self._teacher_validation in self.trainer.callbacks:
            return []  # the final validate on the fit's trainer: it holds this one already
        return [self._teacher_validation]


def _width(model) -> int:
    return model.get_input_embeddings().weight.shape[1]


def from_config(student, teacher, d, total_steps: int, log_every: int = 10) -> DistillModule:
    """A DistillModule from a `distill` config node (conf/distill/*.yaml)."""
    loss_cfg = dict(d.loss)
    name = loss_cfg.pop("name", "soft_ce")
    inter = d.get("intermediate") or {}
    prog_cfg = d.get("progressive") or {}
    hard = None
    if (d.get("data_strategy") or {}).get("name") == "hard":
        hard = float(d.data_strategy.get("fraction", 0.5))
        if not 0 < hard <= 1:
            raise CapgapError(f"distill.data_strategy.fraction={hard} must be in (0, 1]")
    return DistillModule(
        student, teacher, get_kd_loss(name, **loss_cfg), chunk_size=d.chunk_size,
        teacher_dtype=teacher_dtype(d.get("teacher_dtype")),
        hidden_weight=float(inter.get("hidden", 0.0) or 0.0),
        attention_weight=float(inter.get("attention", 0.0) or 0.0),
        mapping=inter.get("mapping", "uniform"), k=inter.get("k"), pairs=inter.get("pairs"),
        hard_fraction=hard, progressive_stages=int(prog_cfg.get("stages") or 0),
        progressive_fractions=list(prog_cfg["fractions"]) if prog_cfg.get("fractions") else None,
        lr=d.lr, betas=tuple(d.betas), weight_decay=d.weight_decay,
        warmup_fraction=d.warmup_fraction, min_lr_ratio=d.min_lr_ratio,
        total_steps=total_steps, log_every=log_every)
