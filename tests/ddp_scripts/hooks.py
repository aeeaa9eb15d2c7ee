"""Lightning callbacks a test adds to a run through its config
(`+trainer.callbacks=[{_target_: hooks.FailOnRank, ...}]`, with tests/ddp_scripts on PYTHONPATH)."""

from lightning.pytorch.callbacks import Callback


class FailOnRank(Callback):
    """Raise on one global rank at one training step: a rank that fails while the others train."""

    def __init__(self, rank: int = 1, step: int = 2):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"planted failure on rank {self.rank} at step {trainer.global_step}")
