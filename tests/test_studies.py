"""Study identity from the job's side: rows filed under `study=`, the multirun-end fit over
its own study only, and a store setting that only the study task reads."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from law_data import law_rows, with_config
from tiny_checkpoint import make_checkpoint, write_corpus

from capgap.law.multirun_fit import FitLawOnMultirunEnd
from capgap.law.store import Store
from capgap.runtime.errors import CapgapError
from capgap.tasks import run_task

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(tmp_path, *overrides, hydra=False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", return_hydra_config=hydra, overrides=[
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.run_dir={tmp_path / 'run'}",
            "trainer=cpu", "trainer.enable_progress_bar=false", "logger=csv", *overrides])


def test_a_point_is_filed_under_its_study_and_the_hash_ignores_the_name(tmp_path):
    from capgap.law.studies import config_hash

    store = f"store.url={tmp_path / 's.sqlite'}"
    # a student not below its teacher is recorded as skipped without training: the quickest row
    for study in ("default", "other", "other"):
        out = run_task(config(tmp_path, store, "teacher=micro_xs", "student.size=1M", f"study={study}"))
        assert out["status"] == "skipped"
    rows = Store(str(tmp_path / "s.sqlite")).results(None)
    assert [(r["study"], r["status"]) for r in rows] == [("default", "skipped"), ("other", "skipped")]
    assert rows[0]["config_hash"] == rows[1]["config_hash"]
    assert config_hash(config(tmp_path, "study=a")) == config_hash(config(tmp_path, "study=b"))
    with pytest.raises(CapgapError, match="study=' ' must be a non-empty name"):
        run_task(config(tmp_path, store, "teacher=micro_xs", "student.size=1M", "study=' '"))


def test_the_micro_preset_names_its_study(tmp_path):
    assert config(tmp_path).study == "default"
    assert config(tmp_path, "experiment=micro_law").study == "micro_law"


def test_multirun_end_fit_reads_its_own_study_only(tmp_path, capsys):
    url = tmp_path / "s.sqlite"
    store = Store(str(url))
    # the default study's rows follow another law and another token budget: pooled with the
    # sweep's own rows they would move the line, or make the fit refuse them
    for row in (with_config(law_rows(seeds=1), study="sweep")
                + with_config(law_rows(seeds=1, a=1.5, rng_seed=1), distill__tokens=9000)):
        store.record(row)
    sweep = tmp_path / "sweep"
    cfg = config(tmp_path, f"store.url={url}", "study=sweep", f"hydra.sweep.dir={sweep}", hydra=True)
    FitLawOnMultirunEnd().on_multirun_end(cfg)
    assert "joint: T* = " in capsys.readouterr().out
    assert json.loads((sweep / "fit.json").read_text())["law"]["a"] == pytest.approx(2.5, rel=0.05)

    rows = with_config(law_rows(seeds=1), study="mixed")
    rows[0]["config"]["distill"]["tokens"] = 4000
    for row in rows:
        store.record(row)
    cfg = config(tmp_path, f"store.url={url}", "study=mixed", f"hydra.sweep.dir={tmp_path / 'm'}", hydra=True)
    FitLawOnMultirunEnd().on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert out.startswith("[capgap] no law fitted: study mixed") and "distill.tokens: 1000, 4000" in out
    assert not (tmp_path / "m" / "fit.json").exists()


def test_store_postgres_without_a_url_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPGAP_STORE_URL", raising=False)
    cfg = config(tmp_path, "store=postgres", "teacher=micro_xs", "student.size=250K")
    with pytest.raises(CapgapError, match="store=postgres needs CAPGAP_STORE_URL"):
        run_task(cfg)
    assert not (tmp_path / "cache").exists()  # before any tokenizing or pretraining


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    return make_checkpoint(base / "teacher"), write_corpus(base / "corpus.jsonl")


@pytest.mark.parametrize("task", ["evaluate", "prune", "pretrain"])
def test_tasks_that_never_touch_the_store_ignore_its_setting(task, tiny, tmp_path, monkeypatch):
    """store=postgres without its URL (and any other store) is no concern of these tasks."""
    monkeypatch.delenv("CAPGAP_STORE_URL", raising=False)
    teacher, corpus = tiny
    if task == "pretrain":  # the micro family only, on a token budget of seconds
        args = ["teacher=micro_xs", "teacher.pretrain_tokens=2048", "pretrain.batch_size=4",
                "pretrain.block_size=64", "eval.block_size=64"]
    else:
        args = [f"teacher.path={teacher}", "data=local", f"data.path={corpus}", "data.val_fraction=0.1",
                "eval.block_size=32", "prune=magnitude", "prune.sparsity=0.5"]
    metrics = run_task(config(tmp_path, "store=postgres", f"task={task}", *args))
    assert metrics["val_loss"] > 0
    assert "store" in (tmp_path / "run" / "config_resolved.yaml").read_text()


def test_rows_and_messages_name_the_teacher_path_not_the_preset_it_replaced(tmp_path, caplog):
    """`teacher.path=DIR` replaces the model of `teacher=` (micro_xs by default here): rows,
    lines and run folders name DIR's folder, never the preset (they said "micro_xs")."""
    import sys
    sys.path.insert(0, str(CONF.parent))
    import run  # run folders: the same name, from the same helper
    from capgap.models import teacher_name

    assert teacher_name({"name": "micro_s", "path": "/data/ckpts/my-teacher/"}) == "my-teacher"
    assert teacher_name({"name": "micro_s", "path": None}) == "micro_s"
    assert run.run_name("micro_s", "/data/ckpts/my-teacher", "1M") == "my-teacher_1M"

    folder = make_checkpoint(tmp_path / "my-teacher")
    store = f"store.url={tmp_path / 's.sqlite'}"
    with caplog.at_level("INFO"):
        out = run_task(config(tmp_path, store, "teacher=micro_xs", f"teacher.path={folder}", "student.size=1M"))
    assert out["status"] == "skipped" and "teacher=my-teacher" in out["reason"]
    (row,) = Store(str(tmp_path / "s.sqlite")).results(None)
    assert row["teacher"] == "my-teacher"
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "teacher=my-teacher" in lines and "micro_xs" not in lines


def test_the_multirun_callback_imports_nothing_heavy():
    """Hydra builds its callbacks before the first job of every run and multirun: importing
    Lightning there cost each `run.py -m` about 17 s. The module must stay light."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import capgap.law.multirun_fit, sys; "
                          "print(sorted(m for m in ('lightning', 'torch') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=CONF.parent).stdout
    assert out.strip() == "[]"
