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


class SlowAfter(Callback):
    """Sleep after every training step past `step`: a window in which a test can kill a run."""

    def __init__(self, step: int = 0, seconds: float = 0.2):
        self.step, self.seconds = step, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            import time

            time.sleep(self.seconds)
