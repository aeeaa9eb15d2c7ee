"""The teacher's held-out loss beside the student's: val/teacher_loss, a flat reference line.

Computed once per validation set (the periodic prefix, then the whole split) and logged at
every evaluation; chunked through the LM head like the student's (capgap.distill.chunked),
in the training precision, on the device the teacher was placed on.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import MeanMetric

from capgap.models.lm_loss import CHUNK_SIZE, lm_loss


class TeacherValidation(Callback):
    def __init__(self, chunk_size: int = CHUNK_SIZE):
        self.chunk_size = chunk_size
        self.metric = MeanMetric()  # synced over DDP ranks in compute()
        self.losses: dict[int, float] = {}  # per validation-set size: a prefix and the whole split differ
        self.pending = False

    @staticmethod
    def _key(trainer) -> int:
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset)

    def on_validation_epoch_start(self, trainer, pl_module):
        # every run's reference figure, the CE-only baseline's too (its training never runs the teacher)
        self.pending = self._key(trainer) not in self.losses
        if self.pending:
            self.metric = self.metric.to(pl_module.device)
            self.metric.reset()

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.pending:
            return
        # callback hooks run outside the step's autocast: enter the training precision's own
        with trainer.precision_plugin.val_step_context():
            loss, n = lm_loss(pl_module.teacher, batch["input_ids"], batch["labels"], self.chunk_size)
        self.metric.update(loss.float(), n)

    def on_validation_epoch_end(self, trainer, pl_module):
        key = self._key(trainer)
        if self.pending:
            self.losses[key] = float(self.metric.compute())
            self.metric.reset()
            self.pending = False
        if key in self.losses:
            pl_module.log("val/teacher_loss", self.losses[key])
