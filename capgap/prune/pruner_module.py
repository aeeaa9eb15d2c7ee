"""PrunerModule: expressiveness scoring as a Lightning fit that never updates a weight.

Use with Trainer(max_epochs=1, limit_train_batches=N): with manual optimization and no
optimizer, global_step never advances, so max_steps would never stop it. Under DDP each
rank scores its own batches (a batch's optional `weight`, 0 for a rank's padding, says
how much it counts) and the ranks' sums are added at the end (ScoreAccumulator.result).
"""

import lightning as L
import torch
from torch import nn

from capgap.prune.scores import ScoreAccumulator


class PrunerModule(L.LightningModule):
    def __init__(self, model, n_batches: int):
        super().__init__()
        self.model = model
        self.n_batches = n_batches
        self.automatic_optimization = False
        # Freeze here, before the strategy wraps the module: DDP records at wrap time which
        # parameters need gradients. The masks are plain tensors, not parameters, so DDP
        # never averages their gradients (the score is a mean of |grad|, not |mean grad|);
        # DDP refuses a module with nothing trainable, hence this zero-cost anchor.
        self._requires_grad = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.scores = None

    def on_fit_start(self):
        self.acc = ScoreAccumulator(self.model)  # after the move to the device

    def training_step(self, batch, batch_idx):
        weight = float(batch.pop("weight", 1.0))
        loss = self.acc.loss(batch)
        self.manual_backward(loss + 0 * self.anchor)
        self.acc.collect(weight)
        self.log("prune/teacher_loss", loss.detach(), prog_bar=True)
        if self.acc.batches >= self.n_batches:
            self.trainer.should_stop = True

    def on_fit_end(self):
        self.scores = self.acc.result(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        for p, flag in zip(self.model.parameters(), self._requires_grad):
            p.requires_grad_(flag)

    def configure_optimizers(self):
        return None  # nothing moves: only mask gradients are read
