"""What `python run.py` shows: one `[capgap]` line per stage, capgap's results, warnings that
ask for action; everything else (Lightning's INFO lines, every warning) only in the run's log
file. Hydra's job logging (conf/hydra/job_logging/capgap.yaml) sends the root logger to the
console through TerminalFilter and to `<run dir>/run.log` unfiltered.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from capgap.runtime.distributed import is_rank_zero

log = logging.getLogger("capgap")

# Lightning warnings about what capgap does on purpose; matched by message, so any other
# warning of the same category still reaches the terminal
BENIGN = (
    "this fit will run with no optimizer",    # scoring (PrunerModule) moves no weight
    "module(s) in eval mode",                 # the student starts in eval; on_fit_start sets train()
    "but have no `validation_step`",          # scoring fits beside the data module's val loader
    "but have no `val_dataloader`",
    "does not have many workers",             # blocks are in memory: workers would only copy them
    "The number of training batches",         # short runs log less often than log_every_n_steps
    "when logging on epoch level in distributed",  # the epoch metrics are torchmetrics, synced in compute()
)
PACKAGE = str(Path(__file__).resolve().parents[1])  # capgap/: its own warnings are shown

_title = "training"


def announce(stage: str, detail: str = "") -> None:
    """The one line that says a stage begins; progress bars take `stage` as their title.
    Said by global rank 0 only: every rank of a job passes the same stages."""
    global _title
    _title = stage
    if is_rank_zero():
        log.info("[capgap] %s%s", stage, f": {detail}" if detail else "")


def report(message: str) -> None:
    """A result worth reading on the terminal (and in the log file), from global rank 0."""
    if is_rank_zero():
        log.info("[capgap] %s", message)


def title() -> str:
    return _title


@contextmanager
def keep_title():
    """For a stage that may run inside another's fit (tokenizing in a datamodule's setup,
    after "pretraining" was announced): whatever it announces, the outer stage's bar keeps
    the outer stage's title."""
    global _title
    outer = _title
    try:
        yield
    finally:
        _title = outer


def is_benign(message, category, filename: str) -> bool:
    """Deprecations raised inside libraries (nothing a capgap user can change) and BENIGN."""
    text = str(message)
    if issubclass(category, (DeprecationWarning, FutureWarning)) and not filename.startswith(PACKAGE):
        return True
    return any(b in text for b in BENIGN)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    logging.getLogger("py.warnings").warning(
        "%s:%s: %s: %s", filename, lineno, category.__name__, message,
        extra={"benign": is_benign(message, category, filename)})


class ConsoleHandler(logging.StreamHandler):
    """Writes through tqdm, which lifts a running progress bar off the line and redraws it
    below, so a line logged during a stage never lands inside its bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001  (logging's contract: a failed emit never raises)
            self.handleError(record)


class TerminalFilter(logging.Filter):
    """Console side of the job logging: capgap's and Hydra's own lines, and warnings that are
    not benign; libraries' INFO lines (GPU available, the cloud-logging tip) stay in the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "benign", False):
            return False
        if record.levelno >= logging.WARNING:
            return True
        return record.name.split(".")[0] in ("capgap", "hydra", "__main__")


def setup() -> None:
    """Route Lightning's logging and Python warnings into the job's handlers (once each)."""
    import lightning  # noqa: F401  (its import adds the console handlers taken off here)

    # Lightning prints through handlers of its own and then propagates to Hydra's: every line
    # twice. Without its handlers it reaches the root logger once, filtered there.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    warnings.showwarning = _show_warning
    if not sys.stderr.isatty():  # weight-loading bars in a log file are noise around errors
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
