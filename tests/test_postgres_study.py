"""A micro study multirun writing into a real PostgreSQL server, and `capgap fit` reading
one (the store suite itself runs on PostgreSQL in test_law_store.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from law_data import law_rows, with_config

from capgap.law.store import Store

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.postgres


def env(tmp_path, url):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CAPGAP_"))}
    e.update(CAPGAP_CACHE=str(tmp_path / "cache"), CAPGAP_STORE_URL=url, HF_HUB_OFFLINE="1",
             OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return e


def test_a_two_point_micro_study_writes_to_postgres(pg_url, tmp_path):
    # the smallest real study: one micro teacher pretrained on 8K tokens, two pruned students
    # distilled on 4K tokens each, every job writing its row into the server
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "store=postgres", "study=pg_micro",
           "teacher=micro_xs", "student.size=250K,175K", "prune.multiple=4",
           "teacher.pretrain_tokens=8192", "distill.tokens=4096", "distill.batch_size=4",
           "distill.block_size=64", "prune.n_batches=2", "prune.batch_size=2", "prune.block_size=64",
           "pretrain.batch_size=4", "pretrain.block_size=64", "eval.block_size=64", "trainer=cpu",
           "trainer.enable_progress_bar=false", "logger=csv", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path, pg_url), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = Store(pg_url).results(status=None)
    assert [(r["study"], r["status"], r["teacher"]) for r in rows] == [("pg_micro", "done", "micro_xs")] * 2
    assert sorted(r["student_params"] for r in rows) == [pytest.approx(175_000, rel=0.01),
                                                         pytest.approx(250_000, rel=0.01)]
    assert all(r["config"]["study"] == "pg_micro" and r["metric"] > 0 for r in rows)
    # the multirun-end fit read those two rows back from the server: one teacher is no law yet
    assert "[capgap] no law fitted: only one teacher size" in out.stdout

    report = subprocess.run([sys.executable, "-m", "capgap.commands.cli", "report", "--store", pg_url],
                            env=env(tmp_path, pg_url), capture_output=True, text=True, timeout=60)
    assert report.returncode == 0 and "studies (1): pg_micro: 2 done, 0 failed, 0 skipped" in report.stdout


def test_capgap_fit_reads_a_postgres_store(pg_url, tmp_path):
    store = Store(pg_url)
    for row in with_config(law_rows(seeds=2), study="pythia"):
        store.record(row)
    out = subprocess.run([sys.executable, "-m", "capgap.commands.cli", "fit", "--store", pg_url, "--study", "pythia",
                          "--out", str(tmp_path / "fit"), "--bootstrap", "100"],
                         env=env(tmp_path, pg_url), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"store {pg_url.split('://')[0]}" in out.stdout or "paper: T*" in out.stdout
    law = json.loads((tmp_path / "fit" / "fit.json").read_text())["law"]
    assert law["a"] == pytest.approx(2.5, rel=0.05)
