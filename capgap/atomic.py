"""Writing files and folders so that a killed or concurrent job never leaves, nor reads,
half of one: write beside the target, then rename over it (rename is atomic on POSIX).

The one place capgap writes anything that another job or a later run reads.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _tmp_name(path: Path, what: str = "tmp") -> Path:
    # a hidden sibling on the same filesystem (rename across filesystems is a copy); the uuid
    # keeps two processes (or two threads of one) from sharing a temp name
    return path.with_name(f".{path.name}.{what}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temp path beside `path` that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
