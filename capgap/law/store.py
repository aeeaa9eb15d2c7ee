"""The results database: one row per finished (or failed, or skipped) study point.

A SQLite file by default so a laptop needs nothing; any SQLAlchemy URL (PostgreSQL on a
cluster, with the `postgres` extra) works the same. Every write is one transaction, so a
killed job leaves either its whole row or nothing. Each row is filed under a study (see
capgap.law.studies); one store may hold many.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError

from capgap.law.studies import DEFAULT, check_name
from capgap.runtime.atomic import atomic_file
from capgap.runtime.cache import default_cache_dir
from capgap.runtime.errors import CapgapError

STATUSES = ("done", "failed", "skipped")

metadata = MetaData()
runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study", String(200), nullable=False, server_default=DEFAULT),
    Column("config_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("teacher", String(200)),
    Column("teacher_params", BigInteger),
    Column("teacher_non_embedding", BigInteger),
    Column("student_params", BigInteger),
    Column("student_non_embedding", BigInteger),
    Column("sparsity", Float),
    Column("tokens", BigInteger),
    # `metric` is the value (lower is better unless the fit is told otherwise), so an
    # exported CSV feeds `capgap fit --csv` unchanged
    Column("metric_name", String(100)),
    Column("metric", Float),
    Column("perplexity", Float),
    Column("extra", JSON),
    Column("seed", Integer),
    Column("config", JSON),
    Column("git_commit", String(64)),
    Column("wall_time_s", Float),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Within a study a config has at most one result and at most one skip; failures may
    # repeat (retries). (Stores made before studies had uq_runs_final without the study.)
    Index("uq_runs_study_final", "study", "config_hash", "status", unique=True,
          sqlite_where=text("status != 'failed'"), postgresql_where=text("status != 'failed'")),
)
COLUMNS = [c.name for c in runs.columns]
REQUIRED = {
    "done": ("config_hash", "teacher", "teacher_params", "student_params", "metric_name", "metric"),
    "failed": ("config_hash", "error"),
    "skipped": ("config_hash", "error"),  # error holds the reason it was skipped
}

RETRIES = 20

# Where SQLite's locks (and WAL's shared memory) cannot be trusted: files seen from many hosts
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs",
                       "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs", "afs", "9p"}
_warned: set[Path] = set()


def default_url() -> str:
    """CAPGAP_STORE (a URL or a path), else store.sqlite in the capgap cache.

    The cache, not the Hydra job dir: every job of every sweep must find the same file.
    """
    env = os.environ.get("CAPGAP_STORE")
    if env:
        return env
    return str(default_cache_dir() / "store.sqlite")


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL or a bare path; None for a server database or memory."""
    if "://" not in url:
        return Path(url).expanduser().resolve()
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise CapgapError(f"store URL {url!r} is not a database URL: {e}") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, from the kernel's table."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:  # not Linux: nothing to warn about
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:  # the table escapes spaces in mount points as \040
            out.append((fields[1].replace("\\040", " "), fields[2]))
    return out


def filesystem_type(path: Path) -> tuple[str, str] | None:
    """(filesystem type, mount point) of the mount holding path: the longest matching prefix."""
    path = os.path.realpath(path)
    best = None
    for point, kind in _mounts():
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        # >=: of two mounts on one point the later, which hides the earlier, wins
        if inside and (best is None or len(point) >= len(best[1])):
            best = (kind, point)
    return best


def warn_if_network(path: Path) -> None:
    """One line, once per file, when a SQLite store lies on a network filesystem."""
    found = filesystem_type(path.parent)
    if found is None or path in _warned:
        return
    kind, point = found
    if kind.lower() in NETWORK_FILESYSTEMS or kind.lower().startswith("nfs"):
        _warned.add(path)
        print(f"capgap: warning: store {path} is on {kind} ({point}), a network filesystem where "
              "SQLite's locks are unsafe; for jobs on many machines use store=postgres with "
              "CAPGAP_STORE_URL=postgresql://...", file=sys.stderr)


def from_config(store_cfg) -> Store:
    """The store a job's `store:` config names; store=postgres needs its URL from the env."""
    url = store_cfg.get("url")
    if store_cfg.get("kind") == "postgres" and not url:
        raise CapgapError("store=postgres needs CAPGAP_STORE_URL=postgresql://USER:PASSWORD@HOST:PORT/DB "
                          "(or store.url=...)")
    return Store(url)


def _is_locked(e: DatabaseError) -> bool:
    msg = str(e.orig).lower()
    return isinstance(e, OperationalError) and ("locked" in msg or "busy" in msg)


class Store:
    def __init__(self, url: str | None = None):
        url = url or default_url()
        path = sqlite_path(url)
        self.url = url
        self.name = str(path) if path else make_url(url).render_as_string(hide_password=True)
        try:
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                warn_if_network(path)
                # the driver's timeout is SQLite's busy timeout: wait for a writer, not fail
                self.engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 60})
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                parsed = make_url(url)
                if parsed.drivername == "postgresql":  # the postgres extra ships psycopg 3
                    parsed = parsed.set(drivername="postgresql+psycopg")
                self.engine = create_engine(parsed, pool_pre_ping=True)
        except ModuleNotFoundError as e:
            raise CapgapError(f"store {self.name} needs the {e.name} driver "
                              f"(for PostgreSQL: pip install 'capgap[postgres]')") from None
        except ArgumentError as e:
            raise CapgapError(f"store URL {url!r} is not a database URL: {e}") from None
        self._retry(self._create_schema)

    def _create_schema(self):
        metadata.create_all(self.engine)
        have = {c["name"] for c in inspect(self.engine).get_columns("runs")}
        if "study" not in have and not [c for c in COLUMNS if c not in have | {"study"}]:
            self._add_study_column()
            have.add("study")
        if missing := [c for c in COLUMNS if c not in have]:
            raise CapgapError(f"store {self.name} has a 'runs' table that is not capgap's "
                              f"(missing columns {', '.join(missing)})")

    def _add_study_column(self):
        """A store from before studies: its rows join the default study, and a config's
        uniqueness becomes per study. One transaction; a second process doing the same at
        once fails on "already exists" and _retry sees the finished migration."""
        with self.engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE runs ADD COLUMN study VARCHAR(200) "
                              f"NOT NULL DEFAULT '{DEFAULT}'"))
            conn.execute(text("DROP INDEX IF EXISTS uq_runs_final"))
            for index in runs.indexes:
                index.create(conn, checkfirst=True)

    def _retry(self, fn, *args):
        """Run fn, retrying while another process holds the SQLite write lock.

        The busy timeout covers most waits, but SQLite returns "locked" without waiting in
        some cases (a schema change, WAL recovery), so back off and try again.
        """
        for attempt in range(RETRIES):
            try:
                return fn(*args)
            except DatabaseError as e:
                msg = str(e.orig)
                # two processes created the same table (PostgreSQL reports it as a duplicate
                # pg_type row) or migrated the same store at once; the next try sees their work
                raced = any(s in msg for s in ("already exists", "pg_type", "duplicate column"))
                if attempt < RETRIES - 1 and (raced or _is_locked(e)):
                    time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
                    continue
                if isinstance(e, OperationalError):
                    raise CapgapError(f"store {self.name}: {msg.splitlines()[0]}") from None
                raise CapgapError(f"store {self.name} is not a readable database: "
                                  f"{str(e.orig).splitlines()[0]}") from None
        raise CapgapError(f"store {self.name} stayed locked after {RETRIES} tries")

    def has_done(self, config_hash: str, study: str = DEFAULT) -> bool:
        query = select(runs.c.id).where(runs.c.config_hash == config_hash, runs.c.study == study,
                                        runs.c.status == "done").limit(1)

        def run():
            with self.engine.connect() as conn:
                return conn.execute(query).first() is not None
        return self._retry(run)

    def record(self, row: dict, replace: bool = False) -> bool:
        """Write one run atomically; False if that config already has this outcome.

        replace=True (a forced re-run) swaps the old done/skipped row for the new one in the
        same transaction, so the store never holds two results of one config.
        """
        values = _validate(row)

        def write():
            try:
                with self.engine.begin() as conn:
                    if replace and values["status"] != "failed":
                        conn.execute(delete(runs).where(runs.c.config_hash == values["config_hash"],
                                                        runs.c.study == values["study"],
                                                        runs.c.status == values["status"]))
                    conn.execute(runs.insert().values(**values))
                return True
            except IntegrityError:
                return False
        return self._retry(write)

    def results(self, status: str | None = "done", study: str | None = None) -> list[dict]:
        """Rows as dicts in insertion order; status=None gives every row, study=None every study."""
        query = select(runs).order_by(runs.c.id)
        if status is not None:
            query = query.where(runs.c.status == status)
        if study is not None:
            query = query.where(runs.c.study == study)

        def read():
            with self.engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(query)]
        return self._retry(read)

    def studies(self) -> dict[str, dict[str, int]]:
        """{study: {status: rows}} for every study the store holds."""
        query = (select(runs.c.study, runs.c.status, func.count())
                 .group_by(runs.c.study, runs.c.status))

        def read():
            out: dict[str, dict[str, int]] = {}
            with self.engine.connect() as conn:
                for study, status, n in conn.execute(query):
                    out.setdefault(study, dict.fromkeys(STATUSES, 0))[status] = n
            return dict(sorted(out.items()))
        return self._retry(read)

    def export_csv(self, path: str | Path, status: str | None = "done",
                   study: str | None = None) -> Path:
        path = Path(path)
        rows = self.results(status, study)
        with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for r in rows:
                r = dict(r, extra=_json_cell(r["extra"]), config=_json_cell(r["config"]),
                         created_at=r["created_at"].isoformat() if r["created_at"] else "")
                writer.writerow(r)
        return path


def _json_cell(value) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


def _sqlite_pragmas(dbapi_conn, _record):
    # WAL lets readers (a notebook, `capgap report`) run while sweep jobs write
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _validate(row: dict) -> dict:
    """Check a row before any write, so a bad row writes nothing."""
    status = row.get("status")
    if status not in STATUSES:
        raise CapgapError(f"store row status must be one of {', '.join(STATUSES)}, got {status!r}")
    if unknown := sorted(set(row) - set(COLUMNS) - {"id"}):
        raise CapgapError(f"store row has unknown keys: {', '.join(unknown)}")
    if missing := [k for k in REQUIRED[status] if row.get(k) in (None, "")]:
        raise CapgapError(f"store row ({status}) is missing {', '.join(missing)}")
    if status == "done":
        try:
            metric = float(row["metric"])
        except (TypeError, ValueError):
            metric = math.nan
        if not math.isfinite(metric):
            raise CapgapError(f"store row metric must be a finite number, got {row['metric']!r}"
                              " (a diverged run is recorded as failed)")
    for key in ("extra", "config"):
        try:
            json.dumps(row.get(key))
        except (TypeError, ValueError) as e:
            raise CapgapError(f"store row {key} must be plain JSON (dicts, lists, numbers, "
                              f"strings): {e}") from None
    values = {k: v for k, v in row.items() if k != "id"}
    values["study"] = check_name(values.get("study") or DEFAULT)
    values.setdefault("created_at", datetime.now(timezone.utc))
    return values
