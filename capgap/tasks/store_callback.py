"""The Lightning callback that connects a task=study run to the law: one row per finished run
in the store (capgap.law.store). It lives with the tasks, not beside the store, because the law
package imports no torch (`capgap fit` starts in a second); the fit of the law when a multirun
ends is Hydra's callback, in capgap.law.multirun_fit."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn

from capgap.runtime import distributed
from capgap.runtime.terminal import announce


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class StoreCallback(Callback):
    """Writes the run's final held-out metrics into the store after the closing full
    validation (not the periodic ones), and a failed row if training raises; also sends the
    hyperparameters and final metrics to TensorBoard's HParams view."""

    def __init__(self, store, row: dict, hparams: dict, tokens_per_step: int, replace: bool = False):
        self.store, self.row, self.hparams, self.replace = store, dict(row), hparams, replace
        self.tokens_per_step = tokens_per_step
        self.t0 = time.perf_counter()
        self.written = False
        self.done_row: dict | None = None  # the done row written, for amend()

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn != TrainerFn.VALIDATING or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        loss = metrics.get("val/loss", math.nan)
        row = {**self.row, "tokens": trainer.global_step * self.tokens_per_step,
               "wall_time_s": time.perf_counter() - self.t0}
        if math.isfinite(loss):
            row.update(status="done", metric_name="val_loss", metric=loss,
                       perplexity=metrics.get("val/ppl"), extra=metrics)
        else:
            row.update(status="failed", error=f"final held-out loss is {loss}")
        announce("writing the store", f"{row['status']} row into {self.store.name}")
        self.store.record(row, replace=self.replace)
        self.written = True
        if row["status"] == "done":
            self.done_row = row
        if isinstance(trainer.logger, TensorBoardLogger) and row["status"] == "done":
            # HParams view: one row per run, comparable across a sweep
            trainer.logger.log_hyperparams(self.hparams, {"hp/val_loss": loss,
                                                          "hp/val_ppl": metrics.get("val/ppl", math.nan)})

    def setup(self, trainer, pl_module, stage):
        # a peer rank's failure may leave this rank stuck in a collective: the watchdog that
        # ends it writes the failed row first
        distributed.current().on_abort(self.fail)

    def amend(self, extra: dict) -> None:
        """Add figures measured after training (the benchmarks of eval=harness) to the extra
        of the done row already written; replaced in one transaction, so the store never holds
        the row twice. Nothing when no done row was written."""
        if self.done_row is None:
            return
        self.done_row = {**self.done_row, "extra": {**(self.done_row.get("extra") or {}), **extra}}
        self.store.record(self.done_row, replace=True)

    def on_exception(self, trainer, pl_module, exception):
        # when another rank failed first, this rank's error is only the collective it left
        error = distributed.peer_failure() or \
            f"{type(exception).__name__}: {str(exception).splitlines()[0] if str(exception) else ''}"
        self.fail(error)

    def fail(self, error: str) -> None:
        if self.written:
            return
        self.store.record({**self.row, "status": "failed", "error": error[:2000],
                           "wall_time_s": time.perf_counter() - self.t0})
        self.written = True
