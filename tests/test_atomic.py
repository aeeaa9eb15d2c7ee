"""Cache entries built once under a lock: concurrent builders build once, a half-written entry
is never read, a corrupt one is reported and rebuilt, a killed builder leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from capgap.runtime.atomic import (
    MARKER,
    build_once,
    build_value,
    build_value_collective,
    entry_problem,
    is_temp,
    sweep_stale,
    write_atomic,
)

ROOT = Path(__file__).resolve().parents[1]

# a builder in its own process: capgap.runtime.atomic imports no torch, so this starts in a blink
BUILDER = """
import sys, time
from pathlib import Path
from capgap.runtime.atomic import build_once
entry, log, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
def build(tmp):
    with log.open("a") as f:
        f.write("built\\n")
    (tmp / "a.bin").write_bytes(b"x" * 1000)
    time.sleep(pause)
    (tmp / "b.txt").write_text("done")
print("built" if build_once(entry, build) else "reused", flush=True)
"""


def builder(entry, log, pause=0.0):
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(entry), str(log), str(pause)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_four_concurrent_builders_build_once(tmp_path):
    entry, log = tmp_path / "cache" / "entry", tmp_path / "log"
    jobs = [builder(entry, log, pause=0.5) for _ in range(4)]
    outs = [j.communicate(timeout=60)[0].split() for j in jobs]
    assert all(j.returncode == 0 for j in jobs)
    assert sorted(o[-1] for o in outs) == ["built", "reused", "reused", "reused"]
    assert log.read_text() == "built\n"
    assert entry_problem(entry) is None and (entry / "b.txt").read_text() == "done"
    # nothing but the entry is left beside it, and the folder of lock files: no temp folder,
    # no lock file beside the entry
    assert sorted(p.name for p in entry.parent.iterdir()) == [".locks", "entry"]
    assert [p.name for p in (entry.parent / ".locks").iterdir()] == ["entry.lock"]


def test_killed_builder_leaves_no_entry_and_no_debris(tmp_path):
    entry, log = tmp_path / "cache" / "entry", tmp_path / "log"
    job = builder(entry, log, pause=60)
    deadline = time.time() + 30
    while not log.exists() and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    # the half-built entry is a temp folder, never the entry itself
    assert entry_problem(entry) == "missing"
    assert [p for p in entry.parent.iterdir() if is_temp(p.name)]
    # the OS freed the dead builder's lock: the next one builds at once and sweeps the debris
    again = builder(entry, log)
    assert again.communicate(timeout=30)[0].split()[-1] == "built"
    assert entry_problem(entry) is None
    assert not [p for p in entry.parent.iterdir() if is_temp(p.name)]


class FakeJob:
    """A rank of a 2-process job whose broadcasts return what rank 0 would send."""

    def __init__(self, rank, sent):
        self.rank, self.world_size, self.sent = rank, 2, list(sent)
        self.is_zero = rank == 0

    def broadcast(self, value):
        return self.sent.pop(0) if not self.is_zero else value


def test_a_collective_build_on_rank_one_never_takes_the_entry_lock(tmp_path):
    # rank 1 of a job whose rank 0 holds the entry's lock through the collective build: were
    # rank 1 to wait for that lock, both would wait on each other for ever
    entry, log = tmp_path / "cache" / "entry", tmp_path / "log"
    holder = builder(entry, log, pause=60)
    try:
        deadline = time.time() + 30
        while not log.exists() and time.time() < deadline:
            time.sleep(0.05)
        made, result = [], []
        job = FakeJob(1, [True, "rank 0's value"])  # rank 0 says: build; then sends its result
        # a thread, so that a build that waits for the lock fails the test instead of hanging it
        t = threading.Thread(daemon=True, target=lambda: result.append(build_value_collective(
            entry, lambda: made.append(1) or "mine", lambda v, tmp: None, lambda f: "loaded", job)))
        t.start()
        t.join(timeout=20)
        # it joined the collective (make ran), kept rank 0's value, and published nothing
        assert result == [("rank 0's value", True)] and made == [1]
        assert entry_problem(entry) == "missing"
    finally:
        holder.kill()
        holder.wait()


def test_a_collective_build_on_rank_zero_publishes_and_sends_its_value(tmp_path):
    entry = tmp_path / "entry"
    job = FakeJob(0, [])
    value, built = build_value_collective(entry, lambda: "v", lambda v, tmp: (tmp / "v.txt").write_text(v),
                                          lambda f: (f / "v.txt").read_text(), job)
    assert (value, built) == ("v", True) and entry_problem(entry) is None
    # the next job finds it: rank 0 loads and sends what it loaded
    assert build_value_collective(entry, lambda: "other", lambda v, tmp: None,
                                  lambda f: (f / "v.txt").read_text(), job) == ("v", False)


def test_build_value_keeps_what_it_made_and_loads_what_another_made(tmp_path):
    entry, loads = tmp_path / "entry", []
    made = object()  # not what load returns: the builder must get this very object back

    def save(value, tmp):
        (tmp / "v.txt").write_text("42")

    def load(folder):
        loads.append(folder)
        return int((folder / "v.txt").read_text())

    assert build_value(entry, lambda: made, save, load) == (made, True) and loads == []
    assert build_value(entry, lambda: made, save, load) == (42, False) and loads == [entry]


def test_truncated_file_is_reported_in_one_line_and_rebuilt(tmp_path, capsys):
    entry, calls = tmp_path / "entry", []

    def build(tmp):
        calls.append(1)
        (tmp / "data.bin").write_bytes(bytes(range(256)) * 10)

    assert build_once(entry, build)
    with (entry / "data.bin").open("r+b") as f:
        f.truncate(100)
    assert entry_problem(entry) == "data.bin has 100 bytes, 2560 expected"
    capsys.readouterr()
    assert build_once(entry, build) and len(calls) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"capgap: warning: cache entry {entry} is corrupt (data.bin has 100 bytes, "
                   "2560 expected); rebuilding"]
    assert (entry / "data.bin").stat().st_size == 2560
    assert not build_once(entry, build) and len(calls) == 2


def test_changed_bytes_fail_the_checksum_and_a_missing_marker_is_incomplete(tmp_path):
    entry = tmp_path / "entry"
    build_once(entry, lambda tmp: (tmp / "x.json").write_text('{"a": 1}'))
    (entry / "x.json").write_text('{"a": 2}')  # same size, other bytes
    assert entry_problem(entry) == "x.json fails its checksum"
    (entry / MARKER).unlink()
    assert entry_problem(entry) == "no completion marker"
    (entry / MARKER).write_text("{trunc")
    assert entry_problem(entry) == "unreadable completion marker"
    manifest = {"files": {"x.json": {"size": 8, "sha256": None}, "gone.bin": {"size": 1, "sha256": None}}}
    (entry / MARKER).write_text(json.dumps(manifest))
    assert entry_problem(entry) == "gone.bin is missing"


def test_a_failed_build_publishes_nothing(tmp_path):
    entry = tmp_path / "entry"

    def build(tmp):
        (tmp / "half").write_text("x")
        raise ValueError("bad corpus")

    with pytest.raises(ValueError):
        build_once(entry, build)
    assert not entry.exists() and [p.name for p in tmp_path.iterdir()] == [".locks"]


def test_sweep_removes_only_temps_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from capgap.runtime.atomic import HOST
    stale = tmp_path / f".x.json.tmp-{HOST}-{dead}-abcdef"
    live = tmp_path / f".y.json.tmp-{HOST}-{os.getpid()}-abcdef"
    other_host = tmp_path / f".z.json.tmp-00000000-{dead}-abcdef"
    for p in (stale, live, other_host):
        p.write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    assert sweep_stale(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name, "keep.json"])
    write_atomic(tmp_path / "keep.json", "{}")  # a write sweeps its folder too
    assert live.exists()
