"""What identifies a run: the teacher's weights (for caches of scores and transfer sets) and
the whole experiment (for resume and the store)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

from capgap.law.studies import NOT_HASHED, flatten
from capgap.models import micro


def teacher_id(cfg, tokenizer) -> str:
    """Names the teacher's weights, so cached scores never outlive a change of teacher."""
    t = cfg.teacher
    if t.get("path"):
        cfg_file = Path(t.path) / "config.json"
        return f"path:{Path(t.path).resolve()}:{cfg_file.stat().st_mtime_ns}"
    if t.source == "micro":
        return f"micro:{micro.cache_folder(t, cfg, tokenizer).name}"
    return f"{t.source}:{t.get('hub_id')}@{t.get('revision')}"


# NOT_HASHED (capgap.law.studies): where a run writes, how it is shown, the study it is filed under
def config_hash(cfg) -> str:
    """Same experiment, same hash: what identifies a run for resume and for the store."""
    items = flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = sorted((k, repr(v)) for k, v in items if not k.startswith(NOT_HASHED))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]
