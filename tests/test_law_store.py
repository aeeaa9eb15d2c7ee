"""The results store: atomic rows, no duplicates, concurrent writers, studies, clear errors.

The tests that take `url` run twice: on a SQLite file and on a throwaway PostgreSQL server
(marked `postgres`; see tests/postgres_server.py).
"""

import csv
import multiprocessing as mp
import os
from datetime import datetime, timezone

import pytest
from sqlalchemy import Index, MetaData, Table, create_engine, text

from capgap.law import store as store_module
from capgap.law.store import Store, default_url, runs
from capgap.runtime.errors import CapgapError


def done_row(i, **kw):
    row = dict(config_hash=f"h{i}", status="done", teacher="pythia_160m",
               teacher_params=162_000_000, student_params=30_000_000, metric_name="val_loss",
               metric=3.0 + i / 1000, seed=0, config={"i": i}, extra={"acc": 0.5})
    row.update(kw)
    return row


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "s.sqlite")


def test_record_is_idempotent_and_failures_are_not_results(url):
    store = Store(url)
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


def test_bad_row_writes_nothing(url):
    store = Store(url)
    for bad in (dict(done_row(1), teacher_params=None), dict(done_row(1), metric=float("nan")),
                dict(done_row(1), status="running"), dict(done_row(1), tpyo=1),
                dict(done_row(1), config={"f": object()}), dict(done_row(1), study=" ")):
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


def test_export_csv_round_trips_the_columns_fit_needs(url, tmp_path):
    store = Store(url)
    store.record(done_row(1))
    store.record(done_row(2, study="other"))
    out = store.export_csv(tmp_path / "out.csv", study="default")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["study"] == "default"
    assert rows[0]["teacher_params"] == "162000000" and float(rows[0]["metric"]) == 3.001
    assert len(list(csv.DictReader(store.export_csv(tmp_path / "all.csv").open()))) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv") == ["all.csv", "out.csv"]


def test_one_config_in_two_studies_is_two_rows(url):
    store = Store(url)
    assert store.record(done_row(1))
    assert store.record(done_row(1, study="micro_law", metric=2.0))  # not a duplicate
    assert not store.record(done_row(1, study="micro_law"))  # but twice in one study is
    store.record(dict(config_hash="h9", status="failed", error="boom", study="micro_law"))
    assert store.has_done("h1") and store.has_done("h1", "micro_law") and not store.has_done("h1", "x")
    assert [r["metric"] for r in store.results(study="micro_law")] == [2.0]
    assert len(store.results(status=None, study="micro_law")) == 2
    assert store.studies() == {"default": {"done": 1, "failed": 0, "skipped": 0},
                               "micro_law": {"done": 1, "failed": 1, "skipped": 0}}
    # a forced re-run replaces the row of its own study only
    assert store.record(done_row(1, study="micro_law", metric=1.5), replace=True)
    assert sorted(r["metric"] for r in store.results()) == [1.5, pytest.approx(3.001)]


def old_schema():
    """The runs table as stores made before studies had it."""
    md = MetaData()
    Table("runs", md, *[c._copy() for c in runs.columns if c.name != "study"],
          Index("uq_runs_final", "config_hash", "status", unique=True,
                sqlite_where=text("status != 'failed'"), postgresql_where=text("status != 'failed'")))
    return md


def test_a_store_from_before_studies_is_migrated(url):
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    old_schema().create_all(engine)
    with engine.begin() as conn:
        conn.execute(old_schema().tables["runs"].insert().values(**done_row(1),
                                                                created_at=datetime.now(timezone.utc)))
    engine.dispose()

    store = Store(url)
    (old,) = store.results()
    assert old["study"] == "default" and old["config_hash"] == "h1"
    # uniqueness is now per study: the old index (config_hash, status) would refuse this row
    assert store.record(done_row(1, study="new"))
    assert not store.record(done_row(1))
    assert set(store.studies()) == {"default", "new"}
    assert len(Store(url).results()) == 2  # opening a migrated store again changes nothing


def test_jobs_opening_an_old_store_at_once_migrate_it_once(url):
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    old_schema().create_all(engine)
    engine.dispose()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(url, barrier, w, 10, f"s{w % 2}")) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    store = Store(url)
    assert {k: v["done"] for k, v in store.studies().items()} == {"s0": 20, "s1": 20}


def _writer(url, barrier, worker, n, study="default"):
    barrier.wait()
    store = Store(url)  # schema creation races too: all processes open a fresh file at once
    for i in range(n):
        assert store.record(done_row(worker * 1000 + i, study=study))


def test_eight_processes_lose_nothing(url):
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


def test_a_store_on_a_network_filesystem_gets_one_warning(tmp_path, monkeypatch, capsys):
    nfs = tmp_path / "home"
    monkeypatch.setattr(store_module, "_mounts", lambda: [("/", "ext4"), (str(tmp_path), "xfs"),
                                                          (str(nfs), "nfs4")])
    Store(str(tmp_path / "local.sqlite"))
    assert capsys.readouterr().err == ""
    Store(str(nfs / "deep" / "store.sqlite"))
    Store(str(nfs / "deep" / "store.sqlite"))  # once per file, not once per job step
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("capgap: warning: ") and "nfs4" in err[0]
    assert "store=postgres" in err[0] and "store.sqlite" in err[0]
    monkeypatch.setattr(store_module, "_mounts", lambda: [("/", "ext4"), (str(tmp_path / "lus"), "lustre")])
    Store(str(tmp_path / "lus" / "s.sqlite"))
    assert "lustre" in capsys.readouterr().err


def test_mount_table_longest_prefix(monkeypatch):
    monkeypatch.setattr(store_module, "_mounts", lambda: [("/", "ext4"), ("/home", "nfs"),
                                                          ("/home/a b", "ext4"), ("/homework", "cifs")])
    assert store_module.filesystem_type("/home/x") == ("nfs", "/home")
    assert store_module.filesystem_type("/home/a b/c") == ("ext4", "/home/a b")
    assert store_module.filesystem_type("/homeless") == ("ext4", "/")


def test_the_real_mount_table_is_read():
    # on Linux the root filesystem is always in it; elsewhere there is no table and no warning
    if os.path.exists("/proc/mounts"):
        assert "/" in {p for p, _ in store_module._mounts()}
    else:
        assert store_module._mounts() == []
