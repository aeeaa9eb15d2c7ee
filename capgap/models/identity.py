"""What names a teacher's weights, for the caches built from them (pruning scores, generated
transfer sets, assistant chains): a change of teacher never meets an old entry."""

from __future__ import annotations

from pathlib import Path

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
