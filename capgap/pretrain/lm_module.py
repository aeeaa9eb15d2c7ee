"""Plain causal-LM training: the project's one training loop.

DistillModule builds on this and overrides `compute_loss`; pretraining the micro family and
post-distillation fine-tuning use it as it is.
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from capgap.models.lm_loss import CHUNK_SIZE, lm_loss
from capgap.runtime import sharding
from capgap.runtime.errors import CapgapError
from capgap.runtime.training import build_trainer


class NonFiniteLoss(CapgapError):
    pass


class CausalLMModule(L.LightningModule):
    def __init__(self, model, lr: float = 3e-4, betas=(0.9, 0.95), weight_decay: float = 0.1,
                 warmup_fraction: float = 0.01, min_lr_ratio: float = 0.1, total_steps: int = 1000,
                 log_every: int = 10, chunk_size: int = CHUNK_SIZE):
        super().__init__()
        self.model = model
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.warmup_fraction, self.min_lr_ratio, self.total_steps = warmup_fraction, min_lr_ratio, total_steps
        self.log_every = log_every
        self.chunk_size = chunk_size
        self.val_loss = MeanMetric(distributed_available_fn=self.synced)
        # checked only every log_every steps: a per-step .item() would sync the GPU each step
        self.register_buffer("_nonfinite", torch.zeros((), dtype=torch.bool), persistent=False)
        # FLOPs of one training micro-batch, read by Lightning's ThroughputMonitor for MFU;
        # set by whoever knows the batch shape (capgap.runtime.training.fit)
        self.flops_per_batch = None

    def synced(self) -> bool:
        """Whether the metrics gather over ranks: under this module's Trainer's ranks, not
        whatever process group exists (rank 0 pretrains a micro teacher alone inside a DDP job)."""
        return self._trainer is not None and self.trainer.world_size > 1

    def flops_per_token(self) -> int:
        """6·N per trained token (forward 2N + backward 4N), N the model's parameters."""
        return 6 * sum(p.numel() for p in self.model.parameters())

    def configure_model(self):
        # trainer=fsdp (Lightning's ModelParallelStrategy) leaves the sharding to the module
        if self._trainer is not None and sharding.is_sharded(self.trainer.strategy):
            sharding.shard_module(self)

    # -- the loss: subclasses change this and nothing else of the loop --
    def compute_loss(self, batch) -> dict[str, torch.Tensor]:
        out = self.model(input_ids=batch["input_ids"], labels=batch["labels"])
        return {"loss": out.loss, "ce": out.loss}

    def training_step(self, batch, batch_idx):
        parts = sharding.in_forward(self.model, self.compute_loss, batch)
        loss = parts["loss"]
        self._nonfinite |= ~torch.isfinite(loss.detach())
        if self.global_step % self.log_every == 0:
            if self._nonfinite.item():
                raise NonFiniteLoss(
                    f"loss became NaN or Inf by step {self.global_step}; stopping without final "
                    "metrics (lower the learning rate or use fp32: trainer.precision=32-true)")
            self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, prog_bar=False)
            self.log("train/loss_pb", loss.detach(), prog_bar=True, logger=False)
        return loss

    def on_before_optimizer_step(self, optimizer):
        if self.global_step % self.log_every == 0:
            # one fused norm on the device: Lightning's grad_norm() gathers a norm per parameter
            # into a new tensor, a device sync for each of a large model's hundreds of parameters
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
                # sharded (trainer=fsdp): a DTensor of partial norms, summed over the ranks here
                self.log("train/grad_norm", norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def on_train_end(self):
        if self._nonfinite.item():
            raise NonFiniteLoss("loss became NaN or Inf near the end of training; no final metrics written")

    def validation_step(self, batch, batch_idx):
        # chunked through the LM head: the batch's full-vocabulary logits never exist
        loss, n = sharding.in_forward(self.model, lm_loss, self.model, batch["input_ids"], batch["labels"],
                                      self.chunk_size)
        # weighted by predicted tokens so a padded last block counts for what it holds
        self.val_loss.update(loss, n)

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
        # linear warmup from 0, then a half cosine down to lr·min_lr_ratio at total_steps
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, self.total_steps,
                                                            min_lr_rate=self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def extra_parameters(self):
        """Trainable parameters outside the model (DistillModule's projections)."""
        return []


def evaluate(model, datamodule, trainer_cfg) -> dict:
    """Held-out loss and perplexity of `model` over the datamodule's validation blocks."""
    trainer = build_trainer(trainer_cfg, logger=False, enable_checkpointing=False)
    res = trainer.validate(CausalLMModule(model), datamodule=datamodule, verbose=False)[0]
    return {"val_loss": float(res["val/loss"]), "val_ppl": float(res["val/ppl"])}
