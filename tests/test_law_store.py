"""The results store: atomic rows, no duplicates, concurrent writers, clear errors."""

import csv
import multiprocessing as mp
import os

import pytest

from capgap.errors import CapgapError
from capgap.law.store import Store, default_url


def done_row(i, **kw):
    row = dict(config_hash=f"h{i}", status="done", teacher="pythia_160m",
               teacher_params=162_000_000, student_params=30_000_000, metric_name="val_loss",
               metric=3.0 + i / 1000, seed=0, config={"i": i}, extra={"acc": 0.5})
    row.update(kw)
    return row


def test_record_is_idempotent_and_failures_are_not_results(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"))
    assert store.record(done_row(1))
    assert not store.record(done_row(1, metric=9.9))  # a re-run never duplicates
    assert store.has_done("h1") and not store.has_done("h2")
    store.record(dict(config_hash="h2", status="failed", error="CUDA out of memory"))
    store.record(dict(config_hash="h2", status="failed", error="again"))  # retries are history
    assert not store.has_done("h2")
    assert [r["config_hash"] for r in store.results()] == ["h1"]
    assert len(store.results(status=None)) == 3
    assert store.results()[0]["metric"] == pytest.approx(3.001)
    # a forced re-run replaces the result in one transaction
    assert store.record(done_row(1, metric=2.5), replace=True)
    assert [r["metric"] for r in store.results()] == [2.5]


def test_bad_row_writes_nothing(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"))
    for bad in (dict(done_row(1), teacher_params=None), dict(done_row(1), metric=float("nan")),
                dict(done_row(1), status="running"), dict(done_row(1), tpyo=1),
                dict(done_row(1), config={"f": object()})):
        with pytest.raises(CapgapError):
            store.record(bad)
    assert store.results(status=None) == []


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "store.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(CapgapError, match="store.sqlite"):
        Store(str(path))


def test_default_url_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("CAPGAP_STORE", raising=False)
    monkeypatch.setenv("CAPGAP_CACHE", str(tmp_path))
    assert default_url() == str(tmp_path / "store.sqlite")
    monkeypatch.setenv("CAPGAP_STORE", "sqlite:////x/y.sqlite")
    assert default_url() == "sqlite:////x/y.sqlite"


def test_export_csv_round_trips_the_columns_fit_needs(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"))
    store.record(done_row(1))
    out = store.export_csv(tmp_path / "out.csv")
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["teacher_params"] == "162000000" and float(rows[0]["metric"]) == 3.001


def _writer(url, barrier, worker, n):
    barrier.wait()
    store = Store(url)  # schema creation races too: all processes open a fresh file at once
    for i in range(n):
        store.record(done_row(worker * 1000 + i))


def test_eight_processes_lose_nothing(tmp_path):
    url = str(tmp_path / "concurrent.sqlite")
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=(url, barrier, w, 50)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    rows = Store(url).results()
    assert len(rows) == 400 and len({r["config_hash"] for r in rows}) == 400
