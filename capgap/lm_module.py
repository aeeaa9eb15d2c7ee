"""Plain causal-LM training: the project's one training loop.

DistillModule builds on this and overrides `compute_loss`; pretraining the micro family and
post-distillation fine-tuning use it as it is.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from torchmetrics import MeanMetric

from capgap.data.blocks import IGNORE
from capgap.errors import CapgapError


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


class NonFiniteLoss(CapgapError):
    pass


class CausalLMModule(L.LightningModule):
    def __init__(self, model, lr: float = 3e-4, betas=(0.9, 0.95), weight_decay: float = 0.1,
                 warmup_fraction: float = 0.01, min_lr_ratio: float = 0.1, total_steps: int = 1000,
                 log_every: int = 10):
        super().__init__()
        self.model = model
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_fraction, self.min_lr_ratio, self.total_steps = warmup_fraction, min_lr_ratio, total_steps
        self.log_every = log_every
        self.val_loss = MeanMetric()
        # checked only every log_every steps: a per-step .item() would sync the GPU each step
        self.register_buffer("_nonfinite", torch.zeros((), dtype=torch.bool), persistent=False)
        self._t0, self._tokens = None, 0

    # -- the loss: subclasses change this and nothing else of the loop --
    def compute_loss(self, batch) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], labels=batch["labels"])
        return {"loss": out.loss, "ce": out.loss}

    def training_step(self, batch, batch_idx):
        parts = self.compute_loss(batch)
        loss = parts["loss"]
        self._nonfinite |= ~torch.isfinite(loss.detach())
        self._tokens += batch["input_ids"].numel()
        if self.global_step % self.log_every == 0:
            if self._nonfinite.item():
                raise NonFiniteLoss(
                    f"loss became NaN or Inf by step {self.global_step}; stopping without final "
                    "metrics (lower the learning rate or use fp32: trainer.precision=32-true)")
            self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, prog_bar=False)
            self.log("train/loss_pb", loss.detach(), prog_bar=True, logger=False)
            now = time.perf_counter()
            if self._t0 is not None:
                self.log("perf/tokens_per_s", self._tokens / (now - self._t0))
            self._t0, self._tokens = now, 0
        return loss

    def on_before_optimizer_step(self, optimizer):
        if self.global_step % self.log_every == 0:
            norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
            if norms:
                self.log("train/grad_norm", torch.stack(norms).norm())
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def on_train_end(self):
        if self._nonfinite.item():
            raise NonFiniteLoss("loss became NaN or Inf near the end of training; no final metrics written")

    def validation_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], labels=batch["labels"])
        # weight by predicted tokens so a padded last block counts for what it holds
        n = (batch["labels"][:, 1:] != IGNORE).sum()
        self.val_loss.update(out.loss, n)

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        extra = [p for p in self.extra_parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        warmup = max(1, int(self.warmup_fraction * self.total_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, self.total_steps, self.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def extra_parameters(self):
        """Trainable parameters outside the model (DistillModule's projections)."""
        return []
