"""Writing files and folders so that a killed or concurrent job never leaves, nor reads,
half of one: write beside the target, then rename over it (rename is atomic on POSIX).
Cache entries are built once under a file lock and carry a completion marker written last.

The one place capgap writes anything that another job or a later run reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")

# temp names carry the writer's host and pid, so a later job can tell debris of a killed
# writer (dead pid on this host) from a write in progress, and remove only the former
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
TEMP = re.compile(r"^\..+\.(?:tmp|old)-([0-9a-f]{8})-(\d+)-[0-9a-f]{6}$")
MARKER = ".complete.json"  # an entry's manifest, the last thing written into it
LOCKS = ".locks"  # the lock files of a folder's entries (lock_for)
CHECKSUM_LIMIT = 64 << 20  # files above this are checked by size only (hashing GBs on every read costs)


def _tmp_name(path: Path, what: str = "tmp") -> Path:
    # a hidden sibling on the same filesystem (rename across filesystems is a copy); the random
    # part keeps two threads of one process from sharing a temp name
    return path.with_name(f".{path.name}.{what}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def is_temp(name: str) -> bool:
    return TEMP.match(name) is not None


def sweep_stale(folder: str | Path) -> int:
    """Remove the temp files and folders that dead processes of this host left in `folder`
    (a SIGKILL runs no cleanup); returns how many. Writes in progress are left alone."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        m = TEMP.match(entry.name)
        if not m or m[1] != HOST or _alive(int(m[2])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temp path beside `path` that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, default=str))


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp folder beside `path` that becomes `path` only if the block succeeds,
    replacing an existing `path` (moved aside first, so a reader never sees a mix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lock_for(path: str | Path) -> FileLock:
    """The lock that guards `path`: a file in the hidden `.locks/` folder beside it. The OS
    releases it when its holder dies, so a killed job never blocks a later one.

    The lock files stay: deleting one on release is not safe with flock (a waiter that opened
    the old file would lock a deleted inode while a newcomer locks a fresh file of the same
    name: two holders; filelock keeps Unix lock files for this reason, tox-dev/filelock#574),
    so they live in one folder out of the entries' way instead of one beside each entry."""
    path = Path(path)
    locks = path.parent / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{path.name}.lock")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest(folder: Path) -> dict:
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        size = f.stat().st_size
        files[str(f.relative_to(folder))] = {
            "size": size, "sha256": _sha256(f) if size <= CHECKSUM_LIMIT else None}
    return files


def entry_problem(folder: str | Path) -> str | None:
    """None if `folder` is a complete cache entry; else what is wrong with it ('missing' when
    there is none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "missing"
    try:
        files = json.loads((folder / MARKER).read_text())["files"]
    except FileNotFoundError:
        return "no completion marker"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable completion marker"
    for rel, want in files.items():
        f = folder / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} expected"
        if want.get("sha256") and _sha256(f) != want["sha256"]:
            return f"{rel} fails its checksum"
    return None


def _publish(folder: Path, build: Callable[[Path], None]) -> None:
    """Build a missing or corrupt entry into a temp folder and rename it into place; the caller
    holds the entry's lock."""
    problem = entry_problem(folder)
    if problem != "missing":
        print(f"capgap: warning: cache entry {folder} is corrupt ({problem}); rebuilding",
              file=sys.stderr, flush=True)
    print(f"[capgap] building cache entry {folder}", flush=True)
    start = time.perf_counter()
    with atomic_dir(folder) as tmp:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps({"files": _manifest(tmp)}, indent=1))
    print(f"[capgap] built cache entry {folder} in {time.perf_counter() - start:.1f}s", flush=True)


@contextmanager
def _locked(folder: Path):
    lock = lock_for(folder)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[capgap] waiting for another job building cache entry {folder}", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(folder: str | Path, build: Callable[[Path], None]) -> bool:
    """Make sure `folder` is a complete cache entry: if it is not, `build(tmp)` fills a temp
    folder under the entry's lock, the manifest (sizes, checksums) goes in last and the folder
    is renamed into place. Jobs that wait for the lock reuse what the first one built. A
    corrupt entry (a file truncated or changed since) is reported in one line and rebuilt.
    Returns whether this call built it. Under several ranks, rank 0 calls it first
    (capgap.runtime.distributed.Job.zero_first) or the build is collective (build_value_collective).
    """
    folder = Path(folder)
    if entry_problem(folder) is None:
        return False
    with _locked(folder):
        if entry_problem(folder) is None:  # another job built it while this one waited
            return False
        _publish(folder, build)
    return True


def build_value(folder: str | Path, make: Callable[[], T], save: Callable[[T, Path], None],
                load: Callable[[Path], T]) -> tuple[T, bool]:
    """(value, built): build_once of an entry that holds one value. The job that builds it
    keeps what make() returned rather than reading back what save(value, tmp) just wrote
    (a model or a tensor: reading it back costs time and memory twice); the others
    load(folder) it."""
    made = []

    def build(tmp: Path):
        made.append(make())
        save(made[0], tmp)

    if build_once(folder, build):
        return made[0], True
    return load(Path(folder)), False


def build_value_collective(folder: str | Path, make: Callable[[], T], save: Callable[[T, Path], None],
                           load: Callable[[Path], T], job) -> tuple[T, bool]:
    """build_value where make() is a collective every rank of `job` (capgap.runtime.distributed.Job)
    joins, and whose result every rank gets. Rank 0 holds the entry's lock while it decides
    whether to build, so no other job can publish between its decision and the ranks'
    collective; only rank 0 writes, and the others get the value from it."""
    if job.world_size == 1:
        return build_value(folder, make, save, load)
    folder = Path(folder)
    if not job.is_zero:
        built = job.broadcast(None)
        value = make() if built else None
        return job.broadcast(None), built
    with _locked(folder):
        built = job.broadcast(entry_problem(folder) is not None)
        if built:
            value = make()
            _publish(folder, lambda tmp: save(value, tmp))
        else:
            value = load(folder)
    return job.broadcast(value), built
