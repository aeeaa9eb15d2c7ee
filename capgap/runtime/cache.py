"""Where capgap keeps what it makes once and reuses (the config's paths.cache_dir default)."""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAPGAP_CACHE") or Path.home() / ".cache" / "capgap")
