"""What identifies a run: the teacher's weights (for caches of scores and transfer sets) and
the whole experiment (for resume and the store)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

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


# what does not change a run's result: where it writes, how it is shown and stored
NOT_HASHED = ("paths", "hydra", "store", "logger", "trainer.enable_progress_bar",
              "trainer.enable_model_summary", "trainer.log_every_n_steps")


def config_hash(cfg) -> str:
    """Same experiment, same hash: what identifies a run for resume and for the store."""
    items = _flatten(OmegaConf.to_container(cfg, resolve=False))
    kept = sorted((k, v) for k, v in items if not k.startswith(NOT_HASHED))
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]


def _is_off(v) -> bool:
    return v is None or v is False or v == [] or v in ("", "none", "off") or (
        isinstance(v, (int, float)) and v == 0)


def _flatten(d, prefix=""):
    # keys at an "off" value are left out, so adding a new option (off by default) keeps the
    # hash of every earlier run: the store still recognises them and does not re-run them
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        elif not _is_off(v):
            yield f"{prefix}{k}", repr(v)
