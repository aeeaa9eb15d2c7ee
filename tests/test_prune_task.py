"""task=prune writes its figures through the logger the user picked (logger=csv: no
TensorBoard files), and its layer table beside the student whatever the logger."""

import csv

import pytest
from test_distill_task import config, tiny_setup  # noqa: F401  (fixture)

from capgap.tasks import run_task


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_prune_task_honours_logger(tiny_setup, tmp_path, logger):
    root, corpus = tiny_setup
    m = run_task(config(root, corpus, tmp_path / "run", "task=prune", f"logger={logger}"))
    run = tmp_path / "run"
    events = list(run.rglob("events.out.tfevents.*"))
    assert (run / "prune_summary.txt").read_text().startswith("component")
    if logger == "csv":
        assert not events
        row, = csv.DictReader((run / "csv" / "metrics.csv").open())
        assert float(row["prune/val_loss/student"]) == pytest.approx(m["val_loss"])
        assert float(row["prune/val_loss/teacher"]) == pytest.approx(m["teacher_val_loss"])
    else:
        assert events and not (run / "csv").exists()
