"""task=study end to end on a tiny micro point: one store row per point, a rerun adds none
and trains nothing, a point with S >= T is skipped with its reason, and the multirun-end
callback fits the law from the store."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from capgap.law.store import Store
from capgap.tasks import run_task

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(tmp_path, *overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.run_dir={tmp_path / 'run'}",
            f"store.url={tmp_path / 'store.sqlite'}", "trainer=cpu", "trainer.enable_progress_bar=false",
            "logger=csv", "teacher=micro_xs", "teacher.pretrain_tokens=8192", "distill.tokens=4096",
            "distill.batch_size=4", "distill.block_size=64", "prune.n_batches=2", "prune.batch_size=2",
            "prune.block_size=64", "pretrain.batch_size=4", "pretrain.block_size=64",
            "eval.block_size=64", *overrides])


def test_study_point_writes_one_row_and_a_rerun_adds_none(tmp_path):
    cfg = config(tmp_path, "student.size=250K", "prune.multiple=4")
    first = run_task(cfg)
    store = Store(str(tmp_path / "store.sqlite"))
    rows = store.results()
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "done" and row["teacher"] == "micro_xs"
    assert row["metric_name"] == "val_loss" and row["metric"] == pytest.approx(first["val_loss"])
    assert abs(row["student_params"] - 250_000) <= 0.01 * 250_000
    assert row["teacher_params"] == cfg.teacher.params
    assert row["tokens"] == first["tokens"] and row["config_hash"] == first["config_hash"]

    again = run_task(cfg)
    assert again["status"] == "cached" and again["val_loss"] == pytest.approx(first["val_loss"])
    assert len(store.results(None)) == 1
    assert not (tmp_path / "cache" / "checkpoints").exists() or not any((tmp_path / "cache" / "checkpoints").iterdir())


def test_student_not_smaller_than_teacher_is_skipped_not_an_error(tmp_path):
    cfg = config(tmp_path, "student.size=1M")
    out = run_task(cfg)
    assert out["status"] == "skipped" and "not below teacher=micro_xs" in out["reason"]
    run_task(cfg)
    rows = Store(str(tmp_path / "store.sqlite")).results(None)
    assert [r["status"] for r in rows] == ["skipped"]
    assert not (tmp_path / "cache" / "teachers").exists()  # nothing was pretrained for it


def test_config_hash_ignores_display_and_off_options_but_not_the_experiment(tmp_path):
    from capgap.law.studies import config_hash

    base = config_hash(config(tmp_path, "student.size=250K"))
    assert config_hash(config(tmp_path, "student.size=250K", "trainer.enable_progress_bar=true",
                              "logger=tensorboard", "store.force=true")) == base
    # a new option left off must not make every earlier point look new to the store
    assert config_hash(config(tmp_path, "student.size=250K", "+distill.some_new_option=null")) == base
    assert config_hash(config(tmp_path, "student.size=300K")) != base
    assert config_hash(config(tmp_path, "student.size=250K", "seed=1")) != base


def test_a_diverged_point_is_recorded_as_failed_never_as_a_result(tmp_path, monkeypatch):
    from capgap.distill.module import DistillModule
    from capgap.runtime.errors import CapgapError

    def nan_loss(self, batch):
        return {"loss": self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss * float("nan")}

    monkeypatch.setattr(DistillModule, "compute_loss", nan_loss)
    cfg = config(tmp_path, "student.size=250K", "prune.multiple=4")
    with pytest.raises(CapgapError, match="NaN or Inf"):
        run_task(cfg)
    store = Store(str(tmp_path / "store.sqlite"))
    assert store.results("done") == []
    failed = store.results("failed")
    assert len(failed) == 1 and "NaN or Inf" in failed[0]["error"]
    assert not (tmp_path / "run" / "metrics.json").exists()
