"""The progress bar of every Trainer capgap builds: one bar per stage, titled by the stage
(`capgap.runtime.terminal.announce`), counting to the stage's real end.

Lightning's bars count batches per epoch and title them "Epoch 0" (Rich: "Epoch 0/-2" with
max_epochs=-1); capgap trains to max_steps across epochs, so the bar counts optimizer steps
to max_steps (batches, for fits that take no step: scoring), from where a resumed run starts.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

from capgap.runtime import terminal


class StageBar(TQDMProgressBar):
    @property
    def train_description(self) -> str:
        return terminal.title()

    @property
    def validation_description(self) -> str:
        return "evaluating"

    @staticmethod
    def _counts_steps(trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_start(self, trainer, pl_module):
        bar = self.train_progress_bar = self.init_train_tqdm()
        if self._counts_steps(trainer):
            bar.total, bar.initial, bar.n = trainer.max_steps, trainer.global_step, trainer.global_step
        else:
            bar.total = self.total_train_batches * max(1, trainer.max_epochs or 1)

    def on_train_epoch_start(self, trainer, *_):
        pass  # one bar for the whole fit: no reset and no "Epoch N" at each epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        n = trainer.global_step if self._counts_steps(trainer) else bar.n + 1
        if self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_start(self, trainer, pl_module):
        # the closing evaluation of a fit (trainer.validate) is a stage of its own; tasks that
        # only evaluate have announced it already
        if trainer.state.fn == "validate" and terminal.title() != "evaluating":
            terminal.announce("evaluating", f"{int(self.total_val_batches)} held-out batches after {terminal.title()}")
        super().on_validation_start(trainer, pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.has_dataloader_changed(dataloader_idx):  # capgap validates on one loader
            self.val_progress_bar.reset(convert_inf(self.total_val_batches_current_dataloader))

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        # "train/loss_pb" (logged for the bar only) reads as "loss"
        return {k.removeprefix("train/").removesuffix("_pb"): v for k, v in items.items()}
